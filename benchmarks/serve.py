"""How fast lenet.serve answers /predict: a loopback load test with a fixed number of requests.

    python benchmarks/serve.py --ckpt outputs/<run>/checkpoints/best.ckpt [--clients 8] [--requests 2000]
                               [--image pad|photo] [--repeats 3] [serve overrides, e.g. workers=1 threads=null]

Starts `python -m lenet.serve` on a free port (its defaults, access log included), then `--clients`
threads of this process, each with its own keep-alive connection, post the same image until `--requests` have
been answered, after `--warmup` requests that are not counted. The image (`--image`) is one the page sends, a
280x280 PNG of a digit drawn with a 20-pixel pen (`pad`), or a photo: 400x300 dark ink on tinted paper, JPEG
(`photo`). Reports requests/s and the p50/p99 latency, each the median of `--repeats` runs against the same
server. The client threads share the machine's cores with the server: on 2 cores the figures are the whole
loop's, load generator included.
"""

import argparse
import http.client
import io
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def pad_image() -> bytes:
    """A 7 as the page's pad sends it: black ink on white, 280x280 PNG."""
    image = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(image).line([(80, 70), (200, 70), (130, 220)], fill="black", width=20, joint="curve")
    return encoded(image, "PNG")


def photo_image() -> bytes:
    """A 7 photographed: dark ink on tinted paper, blurred a little, noisy, 400x300 JPEG."""
    image = Image.new("RGB", (400, 300), (228, 221, 200))
    ImageDraw.Draw(image).line([(150, 70), (260, 70), (190, 230)], fill=(40, 45, 90), width=14, joint="curve")
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16)
    noisy += np.random.default_rng(0).integers(-12, 13, noisy.shape, dtype=np.int16)
    return encoded(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=85)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = "lenetbenchmarkboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(port: int, body: bytes, content_type: str, clients: int, requests: int) -> tuple[float, list[float]]:
    """(wall seconds, each request's latency in seconds) for `requests` posts from `clients` threads."""
    left = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while True:
            with lock:
                if next(left, None) is None:
                    break
            start = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": content_type})
            response = connection.getresponse()
            answer = response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                failures.append(f"{response.status} {answer[:200]!r}")
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return wall, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", choices=["pad", "photo"], default="pad")
    parser.add_argument("overrides", nargs="*", help="lenet.serve overrides, e.g. workers=4")
    args = parser.parse_args()

    data = pad_image() if args.image == "pad" else photo_image()
    body, content_type = multipart(data, f"digit.{'png' if args.image == 'pad' else 'jpg'}")
    command = [sys.executable, "-m", "lenet.serve", f"ckpt_path={args.ckpt}", "port=0",
               "hydra.run.dir=benchmarks/results/serve", *args.overrides]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            sys.exit(f"lenet.serve did not start: {line}{server.stdout.read()}")
        port = int(found[1])
        threading.Thread(target=server.stdout.read, daemon=True).start()  # the access log, when on: a full pipe blocks
        load(port, body, content_type, args.clients, args.warmup)
        runs = []
        for _ in range(args.repeats):
            wall, latencies = load(port, body, content_type, args.clients, args.requests)
            p50, p99 = np.percentile(latencies, [50, 99]) * 1000
            runs.append((args.requests / wall, p50, p99))
        rate, p50, p99 = (statistics.median(column) for column in zip(*runs, strict=True))
        print(
            f"{args.image} image ({len(data):,} bytes), {args.clients} clients, {args.requests} requests x "
            f"{args.repeats}, {' '.join(args.overrides) or 'defaults'}: {rate:.0f} requests/s, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (runs: "
            + ", ".join(f"{r:.0f}/s {a:.1f}/{b:.1f} ms" for r, a, b in runs)
            + ")"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
