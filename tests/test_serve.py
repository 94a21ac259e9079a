"""lenet.serve: the API on a real uvicorn, its start-up errors, and the page in a real browser (Debian's Chromium)."""

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from conftest import compose_config, glyph_split, lenet_command
from lenet.cli import check as check_config
from lenet.frame.errors import ConfigError, ModelError
from lenet.inference.http_api import MB, Limits, ServeError, create_app, get_health, listen, serve, server_config
from lenet.inference.model_files import load
from lenet.inference.request_limits import Hosts, allowed_hosts
from test_images import bar_png
from test_predict import VARIANTS, encoded

ROOT = Path(__file__).parents[1]
LIMIT = 256 * 1024  # the test server's upload limit: large enough for every test image, small to exceed
# The test server's settings: conf/serve.yaml's, with that limit and short timeouts, so that tests can exceed them.
UPLOAD_TIMEOUT_S, HEADER_TIMEOUT_S = 2, 1
SETTINGS = ("max_upload_mb=0.25", f"upload_timeout_s={UPLOAD_TIMEOUT_S}", f"header_timeout_s={HEADER_TIMEOUT_S}")
LOOPBACK = allowed_hosts(None, "127.0.0.1", "127.0.0.1")  # what a server bound to 127.0.0.1 answers by default
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's own Chromium probe starts it: root needs --no-sandbox; without the background-networking flags
# Chromium keeps trying Google's hosts, which an offline machine refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("LENET_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))


@pytest.fixture(scope="module")
def classifier(glyph_checkpoint):
    return load(glyph_checkpoint, device="cpu")


@contextlib.contextmanager
def running(classifier, cfg, hosts: Hosts = LOOPBACK):
    """The base URL of a real uvicorn serving `classifier` with the settings `cfg`, in a thread of this process."""
    sock = listen("127.0.0.1", 0)
    running = uvicorn.Server(server_config(create_app(classifier, cfg, hosts), cfg))
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
def server(classifier, tmp_path_factory):
    """The test server: the glyph checkpoint with SETTINGS."""
    with running(classifier, serve_config(tmp_path_factory.mktemp("serve"), *SETTINGS, "access_log=false")) as url:
        yield url


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


def test_predict_answers_as_the_loaded_classifier_does(server, uploads, classifier):
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
    assert response.json() == {"status": "ok", "process": os.getpid(), "model": glyph_checkpoint.name,
                               "dataset": "mnist", "classes": classifier.classes, "max_upload_bytes": LIMIT,
                               "max_megapixels": 50, "max_decoded_bytes": 100 * MB}  # fmt: skip


def test_a_route_reads_the_model_and_limits_it_serves_from_app_state(classifier):
    app = FastAPI()  # no create_app: a route needs only what app.state holds
    app.state.classifier = classifier
    app.state.limits = Limits(max_upload=1, max_megapixels=2, max_pixels=2_000_000, max_decoded=3, upload_timeout=4)
    health = asyncio.run(get_health(Request({"type": "http", "app": app})))
    assert (health["model"], health["classes"]) == (classifier.source.name, classifier.classes)
    assert (health["max_upload_bytes"], health["max_megapixels"], health["max_decoded_bytes"]) == (1, 2, 3)


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
    # Form fields besides the file are small: a large one is refused, not held in memory.
    "large text field": ({"data": {"note": "x" * 100_000}, "files": {"file": ("a.png", b"\x89PNG")}}, 400, "64KB"),
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
        check_config(serve_config(tmp_path, f"ckpt_path={glyph_checkpoint}", "port=70000"))  # the frame's check
    with pytest.raises(ConfigError, match=r"max_upload_mb=0 is not allowed"):
        check_config(serve_config(tmp_path, f"ckpt_path={glyph_checkpoint}", "max_upload_mb=0"))
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


# Both signals take the same path (lenet.inference.http_api._stop); Ctrl-C's run is left to make test-all.
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


@pytest.mark.slow  # three model loads, two of them in new interpreters: 40 s on a busy 2-core machine
def test_processes_each_load_the_model_and_answer_on_the_one_port(glyph_checkpoint, uploads, tmp_path):
    """processes=2: two server processes share the port, each answers with the model; SIGTERM stops them all."""
    command = lenet_command("serve", f"ckpt_path={glyph_checkpoint}", "port=0", "processes=2")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()  # written once every process serves
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert url, line + process.stdout.read()
        answered = {}  # process id -> its answer
        for _ in range(100):  # each on a new connection, which either process may accept
            with httpx.Client() as client:
                server = client.get(f"{url[1]}health", timeout=30).json()["process"]
                answered[server] = post(url[1], uploads[0][0][0], client=client).json()["prediction"]
            if len(answered) == 2:
                break
        assert process.pid not in answered and list(answered.values()) == [uploads[1][0][0]] * 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "Stopped (SIGTERM)" in process.stdout.read()
        assert not [pid for pid in answered if Path(f"/proc/{pid}").exists()], "a server process outlived the stop"
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

            # A chosen file is sent as it is, and answered as lenet.inference.trained_model's classifier answers it.
            (data, suffix), (expected, *_) = uploads[0][2], uploads[1][2]
            (tmp_path / f"digit{suffix}").write_bytes(data)
            page.set_input_files("#file", tmp_path / f"digit{suffix}")
            page.wait_for_selector("body[data-state=done]", timeout=10_000)
            assert page.text_content("#label") == expected
            assert not errors, errors
        finally:
            browser.close()


# What one request may cost: pixels, time to send its head and its body, memory while it waits; whom it answers.


def rss_mb(pid: int | str = "self") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024


@contextlib.contextmanager
def peak_rss(pid: int | str = "self"):
    """The highest RSS growth (MB) of a process while the block runs, sampled every 5 ms: `peak[0]` after it."""
    start, peak, done = rss_mb(pid), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid) - start)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


@pytest.fixture(scope="module")
def default_server(classifier, tmp_path_factory):
    """The glyph checkpoint served with conf/serve.yaml's own limits (10 MB uploads, 50 megapixels)."""
    with running(classifier, serve_config(tmp_path_factory.mktemp("serve"), "access_log=false")) as url:
        yield url


def test_an_image_of_too_many_pixels_is_refused_from_its_header(default_server, uploads):
    bomb = bar_png(13000, "RGBA")  # 169 megapixels: under Pillow's own limit, over max_megapixels (50); 3 MB
    Image.core.reset_stats()  # the server runs in this process: Pillow counts the images it makes
    with peak_rss() as grown:
        response = post(default_server, bomb)
    assert response.status_code == 413
    assert response.json()["error"] == (
        "13000x13000 pixels is more than the limit, 50 megapixels (max_megapixels): scale the image down"
    )
    # Decoding it would take 676 MB (RGBA) at least, and seconds; read from the header, nothing is decoded.
    assert Image.core.get_stats()["new_count"] == 0 and grown[0] < 100, grown[0]
    assert post(default_server, uploads[0][0][0]).status_code == 200


def test_an_image_that_would_take_more_memory_than_max_decoded_mb_is_refused_from_its_header(default_server):
    """The issue's image: 7071 x 7071 16-bit RGBA, under 50 megapixels, 191 MB decoded (it cost +415 MB and 2 s); the
    same pixels in 16-bit grey take 95 MB, under the limit (100 MB)."""
    Image.core.reset_stats()
    response = post(default_server, bar_png(7071, "RGBA", bits=16))
    assert (response.status_code, response.json()) == (413, {"error": (
        "7071x7071 pixels of mode RGBA take 191 MB decoded, more than the limit, 100 MB (max_decoded_mb): "
        "scale the image down"
    )})  # fmt: skip
    assert Image.core.get_stats()["new_count"] == 0, "decoded: Pillow made an image"
    assert post(default_server, bar_png(7071, "L", bits=16)).status_code == 200


def with_text_chunks(png: bytes, megabytes: int) -> bytes:
    """`png` with this many compressed text chunks (zTXt) of 1 MB each, 1 KB each in the file."""
    text = zlib.compress(b"a" * (MB - 64), 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    chunks = b"".join(chunk(b"zTXt", b"note%d\x00\x00" % index + text) for index in range(megabytes))
    return png[:33] + chunks + png[33:]  # after the signature (8 bytes) and IHDR (25)


def test_a_png_whose_text_chunks_hold_more_than_1_mb_is_refused(default_server, uploads):
    """Pillow keeps up to 64 MB of a PNG's text, decompressed: a 33 KB file cost 32 MB before its pixels."""
    good = uploads[0][0][0]
    assert good.startswith(b"\x89PNG") and post(default_server, with_text_chunks(good, 0)).status_code == 200
    response = post(default_server, with_text_chunks(good, 32))
    assert response.status_code == 422 and "text chunks" in response.json()["error"], response.text


def raw_request(url: str, head: str) -> socket.socket:
    """A connection to the server that has sent `head` (a request line and headers, CRLF-separated) and no more."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode())
    return sock


def upload_head(url: str, length: int, origin: str | None = None) -> str:
    host = urlsplit(url).netloc
    origin = f"Origin: {origin}\n" if origin else ""
    return f"POST /predict HTTP/1.1\nHost: {host}\n{origin}Content-Type: image/png\nContent-Length: {length}\n\n"


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one response with a Content-Length, read from a raw connection."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def until_closed(sock: socket.socket, most_s: float, trickle: bytes = b"") -> tuple[float, bytes]:
    """(seconds until the server closed the connection, what it sent first), sending `trickle` a byte every 0.2 s
    meanwhile. Fails if the connection is still open after `most_s`."""
    start, received = time.monotonic(), b""
    while time.monotonic() - start < most_s:
        if select.select([sock], [], [], 0.2)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return time.monotonic() - start, received
            received += data
        elif trickle and not received:
            sock.sendall(trickle[:1])
            trickle = trickle[1:]
    raise AssertionError(f"still open after {most_s} s; received {received[:200]!r}")


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "a byte every 0.2 s"])
def test_an_upload_that_does_not_arrive_in_time_gets_a_408_and_is_closed(server, uploads, trickle):
    # The deadline is for the whole body, not for each piece of it: a slow trickle is cut off as a stall is.
    data = uploads[0][0][0]
    assert len(data) > 100 + 5 * 30, "the trickle must outlast until_closed's 30 s"
    with raw_request(server, upload_head(server, len(data))) as sock:
        sock.sendall(data[:100])
        elapsed, answer = until_closed(sock, 30, trickle=data[100:] if trickle else b"")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": f"the upload did not arrive within {UPLOAD_TIMEOUT_S} s (upload_timeout_s)"
    }
    # Not before the deadline. Closed while the trickle (5 bytes/s) went on: the deadline is for the whole body; an
    # idle timer would never fire (until_closed fails after its 30 s).
    assert elapsed >= UPLOAD_TIMEOUT_S - 0.05
    assert post(server, data).status_code == 200


SLOW_HEADS = {
    "silent": "",  # connects, sends nothing
    "headers cut off": "GET /health HTTP/1.1\nHost: 127.0.0.1\n",
    "headers a byte every 0.2 s": None,  # trickled by the test
}


@pytest.mark.parametrize("case", list(SLOW_HEADS))
def test_a_connection_whose_request_head_is_slow_is_closed(server, case, caplog):
    head = SLOW_HEADS[case]
    with raw_request(server, head or "") as sock:
        trickle = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100 if head is None else b""
        elapsed, answer = until_closed(sock, 30, trickle=trickle)  # the trickled head would take 28 s to send
    assert answer == b"" and elapsed >= HEADER_TIMEOUT_S - 0.05  # closed unanswered, not before the deadline
    assert httpx.get(f"{server}health").status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_kept_alive_connection_serves_requests_as_long_as_each_head_is_prompt(server, uploads):
    with httpx.Client() as client:
        for _ in range(3):
            assert post(server, uploads[0][0][0], client=client).status_code == 200
            time.sleep(HEADER_TIMEOUT_S / 2)
        assert client.get(f"{server}health").status_code == 200


def test_requests_for_other_host_names_are_refused(server):
    # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 reaches the server with this Host.
    refused = httpx.get(f"{server}health", headers={"host": "evil.example"})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "Host 'evil.example' is not a name of this server "
        "(allowed_hosts: localhost, 127.0.0.1, ::1 and the address a request reaches): add it to serve it"
    }
    port = urlsplit(server).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(f"{server}health", headers={"host": host}).status_code == 200, host


def test_cross_origin_requests_are_refused_before_their_body_is_read(server, uploads):
    # A page elsewhere can post a form here without asking first (no preflight): refused before the model runs.
    with raw_request(server, upload_head(server, 100_000, origin="https://evil.example")) as sock:
        sock.settimeout(UPLOAD_TIMEOUT_S / 2)  # answered at once, not when the body would have timed out
        status, body = read_response(sock)
    assert status == 403
    assert json.loads(body) == {
        "error": "web pages of https://evil.example may not call this server: to allow them, add it to cors_origins"
    }
    # Its own page's requests carry its own origin; curl and scripts send none.
    own = server.rstrip("/")
    assert post(server, uploads[0][0][0], client=httpx.Client(headers={"origin": own})).status_code == 200
    assert "access-control-allow-origin" not in httpx.get(f"{server}health", headers={"origin": own}).headers


def test_origins_in_cors_origins_may_call_the_api_from_a_browser(classifier, uploads, tmp_path):
    cfg = serve_config(tmp_path, *SETTINGS, "access_log=false", "cors_origins=[https://app.example]")
    with running(classifier, cfg) as url:
        preflight = httpx.options(
            f"{url}predict",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        answer = post(url, uploads[0][0][0], client=httpx.Client(headers={"origin": "https://app.example"}))
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(f"{url}predict", headers={"origin": "https://other.example"})
        assert other.status_code == 403 and "cors_origins" in other.json()["error"]


def test_allowed_hosts_default_to_the_names_of_the_bound_address(monkeypatch):
    assert allowed_hosts(None, "localhost", "127.0.0.1") == Hosts(("localhost", "127.0.0.1", "::1"), reached=True)
    assert allowed_hosts(None, "192.0.2.7", "192.0.2.7") == Hosts(("192.0.2.7",), reached=True)
    monkeypatch.setattr(socket, "gethostname", lambda: "Box")
    monkeypatch.setattr(socket, "getfqdn", lambda: "box.lan")
    anywhere = allowed_hosts(None, "0.0.0.0", "0.0.0.0")
    assert anywhere == Hosts(("localhost", "127.0.0.1", "::1", "box", "box.lan"), reached=True)
    assert anywhere.allow("192.168.1.20", "192.168.1.20") and not anywhere.allow("evil.example", "192.168.1.20")
    given = allowed_hosts(["Example.org", "*.example.org", "[::1]"], "0.0.0.0", "0.0.0.0")
    assert [given.allow(host, "192.168.1.20") for host in ("example.org", "a.example.org", "::1")] == [True] * 3
    assert not any(given.allow(host, "192.168.1.20") for host in ("evil.example", "badexample.org", "192.168.1.20"))
    assert allowed_hosts(["*"], "127.0.0.1", "127.0.0.1").allow("anything.example", "127.0.0.1")


def page_links(html: str, base: str) -> list[str]:
    return [urljoin(base, link) for link in re.findall(r"(?:src|href)\s*=\s*[\"']([^\"']+)", html)]


def test_the_docs_page_loads_its_scripts_from_this_server(server):
    docs = httpx.get(f"{server}docs")
    assert docs.status_code == 200
    links = page_links(docs.text, f"{server}docs")
    assert len(links) >= 3 and all(link.startswith(server) for link in links), links  # script, style, icon
    assert not re.search(r"https?://", docs.text), "no other address in the page at all"
    for link in links:
        assert httpx.get(link).status_code == 200, link
    assert httpx.get(f"{server}redoc").status_code == 404  # ReDoc's page shows a logo from Redocly's CDN: left off


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium")
def test_the_docs_page_in_chromium_requests_nothing_from_elsewhere(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{server}docs")
            page.wait_for_selector("text=/predict", timeout=15_000)  # Swagger UI has read the OpenAPI document
            page.wait_for_load_state("networkidle")
            assert f"{server}openapi.json" in requested
            assert [url for url in requested if not url.startswith(server) and not url.startswith("data:")] == []
        finally:
            browser.close()


@pytest.mark.slow
def test_stalled_uploads_wait_on_disk_and_are_dropped_at_their_deadline(glyph_checkpoint, tmp_path):
    # The issue's attack: 50 connections send 10 MB - 1 byte of a 10 MB body and stop. Held in memory, they cost
    # 612 MB; spooled to disk, next to nothing, and the deadline frees them all.
    timeout_s = 10  # sending 500 MB on a busy 2-core machine takes a few seconds: all must be sent before it
    command = lenet_command("serve", f"ckpt_path={glyph_checkpoint}", "port=0", f"upload_timeout_s={timeout_s}")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", process.stdout.readline())[1]
        threading.Thread(target=process.stdout.read, daemon=True).start()  # the access log
        body = bytes(10 * MB - 1)
        before = rss_mb(process.pid)
        with contextlib.ExitStack() as stack, peak_rss(process.pid) as grown:
            start = time.monotonic()
            sockets = [stack.enter_context(raw_request(url, upload_head(url, 10 * MB))) for _ in range(50)]
            for sock in sockets:
                sock.sendall(body)
            sent_s = time.monotonic() - start
            answers = [until_closed(sock, timeout_s + 10)[1] for sock in sockets]
        assert sent_s < timeout_s, "sending took longer than the deadline: the test proves nothing"
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
        assert grown[0] < 100, f"RSS grew by {grown[0]:.0f} MB while they were held"
        assert rss_mb(process.pid) - before < 50
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
