"""lenet.serve: the API on a real uvicorn, its start-up errors, and the page in a real browser (Debian's Chromium)."""

import base64
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from conftest import compose_config, glyph_split, lenet_command
from lenet.errors import ConfigError, ModelError
from lenet.predictor import load
from lenet.serve import MB, ServeError, create_app, listen, serve, server_config
from test_predict import VARIANTS, encoded

ROOT = Path(__file__).parents[1]
LIMIT = 256 * 1024  # the test server's upload limit: large enough for every test image, small to exceed
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's own Chromium probe starts it: root needs --no-sandbox; without the background-networking flags
# Chromium keeps trying Google's hosts, which an offline machine refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("LENET_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))


@pytest.fixture(scope="module")
def classifier(glyph_checkpoint):
    return load(glyph_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def server(classifier):
    """The base URL of a real uvicorn serving the glyph checkpoint, in a thread of this process."""
    sock = listen("127.0.0.1", 0)
    running = uvicorn.Server(server_config(create_app(classifier, workers=2, max_upload=LIMIT)))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.started, "the test server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    running.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def uploads(classifier):
    """Files as users have them (each fixture variant of a glyph the checkpoint is sure of) and the JSON expected."""
    images, _ = glyph_split(40, seed=11)
    sure = images[classifier.probabilities(images).max(axis=1) > 0.9]
    files = [VARIANTS[name](image) for name, image in zip(VARIANTS, sure, strict=False)]
    assert len(files) == len(VARIANTS)
    expected = []
    for data, _ in files:
        prepared = classifier.prepare(data)
        probabilities = classifier.probabilities(prepared[None])[0]
        expected.append((classifier.classes[probabilities.argmax()], probabilities, prepared))
    return files, expected


def post(url: str, data: bytes, name: str = "digit.png", client=httpx) -> httpx.Response:
    return client.post(f"{url}predict", files={"file": (name, data)}, timeout=30)


def check(answer: dict, expected, classes) -> None:
    prediction, probabilities, prepared = expected
    assert answer["prediction"] == prediction
    assert answer["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert [p["class"] for p in answer["probabilities"]] == classes
    assert np.allclose([p["probability"] for p in answer["probabilities"]], probabilities, atol=1e-6)
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"]))))
    assert seen.shape == (28, 28) and np.array_equal(seen, prepared), "the image is the one the model saw"


def test_predict_answers_as_lenet_classifier_does(server, uploads, classifier):
    files, expected = uploads
    for (data, suffix), want in zip(files, expected, strict=True):
        response = post(server, data, f"digit{suffix}")
        assert response.status_code == 200, response.text
        check(response.json(), want, classifier.classes)
    # The raw image as the body works too (curl --data-binary @digit.png).
    raw = httpx.post(f"{server}predict", content=files[0][0], headers={"content-type": "image/png"})
    check(raw.json(), expected[0], classifier.classes)


def test_health_names_the_model_and_its_classes(server, glyph_checkpoint, classifier):
    response = httpx.get(f"{server}health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": glyph_checkpoint.name, "dataset": "mnist",
                               "classes": classifier.classes, "max_upload_bytes": LIMIT}  # fmt: skip


def chunked(data: bytes):
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


# Readable images over LIMIT: one whose request is over it by more than a multipart envelope, one only by its file.
TOO_LARGE = encoded(Image.effect_noise((600, 600), 80), "BMP")
JUST_OVER = encoded(Image.effect_noise((520, 520), 80), "BMP")


# What a bad upload is sent as (httpx.post's arguments), its status, and a part of its error.
BAD_UPLOADS = {
    "not an image": ({"files": {"file": ("a.png", b"not an image at all")}}, 422, "not an image"),
    "cut off": ({"files": {"file": ("a.png", encoded(Image.new("RGB", (64, 64)), "PNG")[:60])}}, 422, "cannot read"),
    "blank": ({"files": {"file": ("a.jpg", encoded(Image.new("L", (64, 64), 230), "JPEG"))}}, 422, "blank"),
    "empty file": ({"files": {"file": ("a.png", b"")}}, 400, "empty"),
    "empty body": ({"content": b""}, 400, "empty"),
    "no file field": ({"files": {"image": ("a.png", b"\x89PNG")}}, 400, 'multipart field "file"'),
    "too large": ({"files": {"file": ("a.bmp", TOO_LARGE)}}, 413, "larger than the limit"),
    "just over": ({"files": {"file": ("a.bmp", JUST_OVER)}}, 413, "larger than the limit"),
    "chunked": ({"content": chunked(TOO_LARGE)}, 413, "larger than the limit"),  # no Content-Length: counted
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_json_error_and_the_server_keeps_serving(server, uploads, case):
    request, status, message = BAD_UPLOADS[case]
    response = httpx.post(f"{server}predict", timeout=30, **request)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert post(server, uploads[0][0][0]).status_code == 200


def test_a_client_that_sends_all_before_reading_still_gets_the_413(server, uploads):
    # urllib (like requests) sends the whole body first: had the server closed the connection with most of it
    # unread, the kernel would reset it and the client would see "connection reset" instead of the answer.
    request = urllib.request.Request(f"{server}predict", data=bytes(8 * MB), headers={"content-type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and "larger than the limit" in json.loads(refused.value.read())["error"]
    assert post(server, uploads[0][0][0]).status_code == 200


def test_a_client_that_hangs_up_mid_upload_leaves_no_traceback(server, uploads, caplog):
    url = httpx.URL(server)
    with socket.create_connection((url.host, url.port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        sock.sendall(uploads[0][0][0][:100])
    time.sleep(0.2)
    assert post(server, uploads[0][0][0]).status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_other_routes_and_methods_answer_json_errors(server):
    assert httpx.get(f"{server}predict").json() == {"error": "Method Not Allowed"}
    assert httpx.get(f"{server}nothing").status_code == 404
    assert "/predict" in httpx.get(f"{server}openapi.json").json()["paths"]


def test_64_concurrent_requests_are_all_answered(server, uploads, classifier):
    files, expected = uploads
    start = threading.Barrier(64)

    def one(index: int) -> tuple[int, dict]:
        with httpx.Client() as client:
            start.wait(timeout=30)  # all 64 connected threads post at once
            response = post(server, files[index % len(files)][0], client=client)
        return response.status_code, response.json()

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    assert [status for status, _ in answers] == [200] * 64
    for index, (_, answer) in enumerate(answers):
        check(answer, expected[index % len(files)], classifier.classes)


def test_the_page_loads_nothing_from_elsewhere(server):
    page = httpx.get(server)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//|@import|url\(", page.text)
    assert 'fetch("predict"' in page.text and 'fetch("health")' in page.text  # relative: works under any prefix


def serve_config(tmp_path, *overrides):
    return compose_config(f"run_dir={tmp_path}", *overrides, config_name="serve")


def test_a_bad_model_or_address_is_refused_before_the_port_opens(glyph_checkpoint, tmp_path):
    port = free_port()
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="is not a checkpoint of lenet.train"):
        serve(serve_config(tmp_path, f"ckpt_path={foreign}", f"port={port}"))
    listen("127.0.0.1", port).close()  # the failed start left the port free
    with pytest.raises(ConfigError, match=r"port=70000 is not allowed: it must be an integer from 0 to 65535"):
        serve(serve_config(tmp_path, f"ckpt_path={glyph_checkpoint}", "port=70000"))
    with pytest.raises(ConfigError, match=r"max_upload_mb=0 is not allowed"):
        serve(serve_config(tmp_path, f"ckpt_path={glyph_checkpoint}", "max_upload_mb=0"))
    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=rf"^port {port} is in use on 127.0.0.1: pass another port=N"):
            serve(serve_config(tmp_path, f"ckpt_path={glyph_checkpoint}", f"port={port}"))
    with pytest.raises(ServeError, match="host=192.0.2.1 is not an address of this machine"):
        serve(serve_config(tmp_path, f"ckpt_path={glyph_checkpoint}", "host=192.0.2.1"))


def free_port() -> int:
    with listen("127.0.0.1", 0) as sock:
        return sock.getsockname()[1]


def test_a_missing_checkpoint_is_one_line_and_a_non_zero_exit(tmp_path):
    result = subprocess.run(
        lenet_command("serve", "ckpt_path=missing.ckpt"), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: ckpt_path=missing.ckpt: no such checkpoint file"


# Both signals take the same path (lenet.serve._stop); Ctrl-C's run is left to make test-all.
@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_the_command_serves_until_a_signal_stops_it(glyph_checkpoint, uploads, tmp_path, stop):
    command = lenet_command("serve", f"ckpt_path={glyph_checkpoint}", "port=0")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert url, line + process.stdout.read()
        assert post(url[1], uploads[0][0][0]).json()["prediction"] == uploads[1][0][0]
        process.send_signal(stop)
        assert process.wait(timeout=10) == 0
        assert f"Stopped ({stop.name})" in process.stdout.read()
    finally:
        process.kill()
        process.stdout.close()


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium")
def test_the_page_in_chromium_shows_what_predict_answers_for_the_drawing(server, uploads, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 560}, has_touch=True)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server)
            page.wait_for_selector("#bars .bar")  # the classes, from /health

            # A vertical stroke with the mouse; the live prediction follows once the pen rests.
            box = page.locator("#canvas").bounding_box()
            x = box["x"] + box["width"] / 2
            page.mouse.move(x, box["y"] + 0.2 * box["height"])
            page.mouse.down()
            page.mouse.move(x, box["y"] + 0.8 * box["height"], steps=12)
            page.mouse.up()
            page.wait_for_selector("body[data-state=done]", timeout=10_000)

            drawing = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
            answer = post(server, base64.b64decode(drawing.split(",", 1)[1])).json()
            assert page.text_content("#label") == answer["prediction"] == "1"
            assert page.text_content("#confidence") == f"{100 * answer['confidence']:.1f}%"
            assert page.get_attribute("#seen", "src") == f"data:image/png;base64,{answer['image']}"
            best = page.locator("#bars .best").all_text_contents()
            assert best[0] == answer["prediction"] and best[-1] == f"{100 * answer['confidence']:.1f}%"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / "serve_page.png")

            page.click("#clear")
            assert page.text_content("#label") == "\u2013" and page.get_attribute("body", "data-state") == "idle"

            # The same stroke with a finger: touch events, as a phone sends them.
            touch = page.context.new_cdp_session(page)
            top, bottom = box["y"] + 0.2 * box["height"], box["y"] + 0.8 * box["height"]
            for kind, y in [("touchStart", top), *(("touchMove", top + (bottom - top) * i / 12) for i in range(1, 13))]:
                touch.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
            touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
            page.wait_for_selector("body[data-state=done]", timeout=10_000)
            assert page.text_content("#label") == "1"
            page.click("#clear")

            # A chosen file is sent as it is, and answered as lenet.classifier answers it.
            (data, suffix), (expected, *_) = uploads[0][2], uploads[1][2]
            (tmp_path / f"digit{suffix}").write_bytes(data)
            page.set_input_files("#file", tmp_path / f"digit{suffix}")
            page.wait_for_selector("body[data-state=done]", timeout=10_000)
            assert page.text_content("#label") == expected
            assert not errors, errors
        finally:
            browser.close()
