"""How fast lenet.serve answers /predict, what it holds after many requests, and what each attack costs it.

    python benchmarks/serve.py --ckpt outputs/<run>/checkpoints/best.ckpt [--clients 16 64] [--requests 2000]
                               [--image pad|photo] [--repeats 3] [--soak 20000] [--attacks]
                               [serve overrides, e.g. workers=1 threads=null]

Starts `python -m lenet.serve` on a free port (its defaults, access log included), then for each number of
`--clients`, that many threads of this process, each with its own keep-alive connection, post the same image until
`--requests` have been answered, after `--warmup` requests that are not counted. The image (`--image`) is one the
page sends, a 280x280 PNG of a digit drawn with a 20-pixel pen (`pad`), or a photo: 400x300 dark ink on tinted
paper, JPEG (`photo`). Reports requests/s and the p50/p99 latency, each the median of `--repeats` runs against the
same server. The client threads share the machine's cores with the server: on 2 cores the figures are the whole
loop's, load generator included.

`--versus "A" "B" ...`: configurations side by side instead, each a string of serve overrides ("" is the defaults,
"processes=2 workers=1" two), each on a server of its own, all started first; then rounds in which they take turns,
so that the machine's load drifts alike for all. Per configuration and number of clients: the medians of requests/s,
p50 and p99, the server's CPU per request (its processes together) and the load generator's (this process), and the
1-minute load average over its runs.

`--soak N`: the server's RSS before and after N more requests (16 clients). `--attacks`: the worst request each
limit allows, each waited for a bounded time. Decoding (`max_megapixels`, `max_decoded_mb`): for each kind of image,
the largest the limits let through (and two they refuse), each on a fresh server (glibc keeps much of a large
request's memory for reuse, which would hide the next one's cost), then four of the worst at once with a good
request among them. The rest on the server of the throughput runs. The body (`max_upload_mb`): a 10 MB image, a PNG
whose text chunks decompress far beyond its size, a body over the limit. Time (`upload_timeout_s`,
`header_timeout_s`): 50 and 100 uploads that stop 1 byte short of 10 MB, 100 request heads that stop halfway. Then a
foreign Host, a cross-origin POST, and what the docs pages load from elsewhere. The peak RSS of a request is the
server's VmHWM (processes=N: the supervising process's, not its servers'), reset before it through
/proc/PID/clear_refs (Linux); the RSS of stalled uploads is sampled every 5 ms.
"""

import argparse
import contextlib
import http.client
import io
import os
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


PNG_TYPES = {"1": (0, 1, 1), "L": (0, 1, 8), "I;16": (0, 1, 16), "P": (3, 1, 8), "RGB": (2, 3, 8), "RGBA": (6, 4, 8),
             "RGBA;16": (6, 4, 16)}  # Pillow's mode -> PNG colour type, channels, bits  # fmt: skip


def bar_png(side: int, mode: str, level: int = 9) -> bytes:
    """A side x side PNG, black but for a white bar (something to classify), written row by row with zlib: the
    issue's 7071 x 7071 16-bit RGBA is 389 KB of file."""
    colour_type, channels, bits = PNG_TYPES[mode]
    row_bytes = -(-side * channels * bits // 8)
    black, bar = bytes(1 + row_bytes), bytearray(1 + row_bytes)
    first, last = 1 + row_bytes // 3, 1 + 2 * row_bytes // 3
    bar[first:last] = b"\x01" * (last - first) if mode == "P" else b"\xff" * (last - first)
    compressor = zlib.compressobj(level)
    rows = (bytes(bar) if side // 6 <= y < 5 * side // 6 else black for y in range(side))
    data = b"".join(map(compressor.compress, rows)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    palette = chunk(b"PLTE", bytes(3) + b"\xff" * 3) if mode == "P" else b""
    header = struct.pack(">IIBBBBB", side, side, bits, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def bar_image(side: int, mode: str, fmt: str, **options) -> bytes:
    """The same bar through Pillow's encoder: a JPEG, or a TIFF compressed with deflate."""
    image = Image.new(mode, (side, side))
    image.paste(255 if mode != "F" else 1.0, (side // 3, side // 6, 2 * side // 3, 5 * side // 6))
    return encoded(image, fmt, **options)


def with_text_chunks(png: bytes, megabytes: int) -> bytes:
    """`png` with this many compressed text chunks (zTXt) of 1 MB each, 1 KB each in the file."""
    text = zlib.compress(b"a" * (2**20 - 64), 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return png[:33] + b"".join(chunk(b"zTXt", b"note%d\x00\x00" % i + text) for i in range(megabytes)) + png[33:]


def noise_png(width: int, height: int) -> bytes:
    """Random RGB pixels: a PNG as large as its pixels (no compression helps)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "PNG", compress_level=1)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())[1]) / 1024


@contextlib.contextmanager
def peak_rss(pid: int):
    """The highest RSS growth (MB) of `pid` while the block runs, sampled every 5 ms: `peak[0]` after it."""
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


@contextlib.contextmanager
def high_water(pid: int):
    """The growth (MB) of `pid`'s highest RSS while the block runs, exact: Linux's VmHWM, reset before it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    start, peak = rss_mb(pid), [0.0]
    yield peak
    peak[0] = rss_mb(pid, "VmHWM") - start


def post_once(port: int, body: bytes, content_type: str, headers: dict | None = None) -> tuple[int, float]:
    """(status, seconds) of one POST /predict on a new connection."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/predict", body, {"Content-Type": content_type, **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        connection.close()


def raw_connection(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head)
    return sock


def closed_within(sockets: list[socket.socket], most_s: float) -> tuple[float | None, list[bytes]]:
    """(seconds until the server had closed every connection, or None if some were open after `most_s`; what each
    received)."""
    start, received, open_ = time.monotonic(), {sock: b"" for sock in sockets}, set(sockets)
    while open_ and time.monotonic() - start < most_s:
        for sock in select.select(list(open_), [], [], 0.1)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            received[sock] += data
            if not data:
                open_.discard(sock)
    return (None if open_ else time.monotonic() - start), [received[sock] for sock in sockets]


def upload_head(port: int, length: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def largest_allowed() -> list[tuple[str, bytes]]:
    """Each kind of image at the most that the default limits (50 megapixels, 100 MB decoded) let through, then two
    they refuse."""
    return [
        ("1-bit PNG, 7071x7071 (50 Mpx, 48 MB decoded)", bar_png(7071, "1")),
        ("8-bit grey PNG, 7071x7071 (50 Mpx, 48 MB)", bar_png(7071, "L")),
        ("palette PNG, 7071x7071 (50 Mpx, 48 MB)", bar_png(7071, "P")),
        ("16-bit grey PNG, 7071x7071 (50 Mpx, 95 MB)", bar_png(7071, "I;16")),
        ("RGB PNG, 5120x5120 (26 Mpx, 100 MB)", bar_png(5120, "RGB")),
        ("16-bit RGBA PNG, 5120x5120 (26 Mpx, 100 MB)", bar_png(5120, "RGBA;16")),
        (
            "32-bit float TIFF (deflate), 5120x5120 (26 Mpx, 100 MB)",
            bar_image(5120, "F", "TIFF", compression="tiff_adobe_deflate"),
        ),  # fmt: skip
        ("JPEG, 7071x7071 (50 Mpx, decoded at 1/4: 12 MB)", bar_image(7071, "RGB", "JPEG", quality=90)),
        ("refused: 16-bit RGBA PNG, 7071x7071 (the issue's: 191 MB)", bar_png(7071, "RGBA;16")),
        ("refused: RGBA PNG, 13000x13000 (169 Mpx)", bar_png(13000, "RGBA")),
    ]


def attack_decoding(command: list[str], good: bytes) -> None:
    """Each image on a server of its own, warmed up by one good request: its peak is its own, not memory that an
    earlier request left to be reused (glibc keeps most of it)."""
    print("  max_megapixels, max_decoded_mb: the largest image of each kind, each on a fresh server")
    worst = b""
    for name, image in largest_allowed():
        with serving(command) as (port, pid):
            post_once(port, good, "image/png")
            before = rss_mb(pid)
            with high_water(pid) as grown:
                status, seconds = post_once(port, image, "application/octet-stream")
            kept = rss_mb(pid) - before
        print(
            f"    {name}, {len(image):,} bytes: {status} in {seconds:.2f} s, peak RSS +{grown[0]:.0f} MB, "
            f"+{kept:.0f} MB kept after"
        )
        worst = image if "16-bit RGBA PNG, 5120" in name else worst
    with serving(command) as (port, pid):
        post_once(port, good, "image/png")
        with high_water(pid) as grown, ThreadPoolExecutor(5) as pool:
            bombs = [pool.submit(post_once, port, worst, "image/png") for _ in range(4)]
            time.sleep(0.3)  # the bombs are being read or decoded
            good_status, good_seconds = post_once(port, good, "image/png")
            answers = [future.result() for future in bombs]
    print(
        f"    4 of the 16-bit RGBA 5120x5120 at once: {', '.join(f'{s} in {t:.1f} s' for s, t in answers)}; "
        f"peak RSS +{grown[0]:.0f} MB; a good request sent among them: {good_status} in {good_seconds:.2f} s"
    )


def attack_body(port: int, pid: int, good: bytes) -> None:
    print("  max_upload_mb: the largest body")
    for name, body in [
        ("a 10 MB PNG of noise, 1850x1850 RGB", noise_png(1850, 1850)),
        ("a PNG whose text chunks decompress to 64 MB, 68 KB", with_text_chunks(good, 64)),
        ("a body of 10 MB + 1 byte", bytes(10 * 2**20 + 1)),
    ]:
        with high_water(pid) as grown:
            status, seconds = post_once(port, body, "image/png")
        print(f"    {name} ({len(body):,} bytes): {status} in {seconds:.2f} s, peak RSS +{grown[0]:.0f} MB")


def attack_stalled_uploads(port: int, pid: int, count: int, wait_s: float) -> None:
    size = 10 * 2**20
    body = bytes(size - 1)
    before = rss_mb(pid)
    with contextlib.ExitStack() as stack, peak_rss(pid) as grown:
        start = time.monotonic()
        sockets = [stack.enter_context(raw_connection(port, upload_head(port, size))) for _ in range(count)]
        for sock in sockets:
            sock.sendall(body)
        sent = time.monotonic() - start
        time.sleep(1)  # the server has read what it was sent
        held = rss_mb(pid) - before
        closed, answers = closed_within(sockets, wait_s)
    time.sleep(2)
    statuses = "/".join(sorted({answer[9:12].decode() or "nothing" for answer in answers}))
    end = f"all closed by the server after {closed:.1f} s, answered {statuses}" if closed is not None else None
    print(
        f"  {count} uploads stopped 1 byte short of 10 MB (sent in {sent:.1f} s): RSS +{held:.0f} MB while held "
        f"(peak +{grown[0]:.0f} MB); {end or f'still open after {wait_s:.0f} s (then closed by the client)'}; "
        f"RSS +{rss_mb(pid) - before:.0f} MB 2 s after they closed"
    )


def attack_slow_heads(port: int, count: int, wait_s: float) -> None:
    head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()  # and then nothing
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(raw_connection(port, head)) for _ in range(count)]
        closed, _ = closed_within(sockets, wait_s)
    print(
        f"  {count} request heads stopped halfway: "
        + (f"all closed by the server after {closed:.1f} s" if closed is not None else f"still open after {wait_s} s")
    )


def attack_origins(port: int, good: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health", headers={"Host": "evil.example"})
    host_status = connection.getresponse()
    host_status.read()
    origin_status, _ = post_once(port, good, "image/png", {"Origin": "https://evil.example"})
    print(f"  Host: evil.example -> {host_status.status}; a POST from https://evil.example's page -> {origin_status}")


def attack_docs(port: int) -> None:
    for path in ("/docs", "/redoc"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        page = response.read().decode("utf-8", "replace")
        elsewhere = sorted(set(re.findall(r"https?://[^\s\"'<>]+", page)))
        print(f"  {path}: {response.status}, addresses elsewhere: {', '.join(elsewhere) or 'none'}")


def throughput(port: int, body: bytes, content_type: str, clients: int, requests: int, repeats: int) -> str:
    runs = []
    for _ in range(repeats):
        wall, latencies = load(port, body, content_type, clients, requests)
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        runs.append((requests / wall, p50, p99))
    rate, p50, p99 = (statistics.median(column) for column in zip(*runs, strict=True))
    return (
        f"{clients} clients: {rate:.0f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms (runs: "
        + ", ".join(f"{r:.0f}/s {a:.1f}/{b:.1f} ms" for r, a, b in runs)
        + ")"
    )


def cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and of its child processes (processes=N: the server processes it spawned)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else None
        except OSError:  # ended meanwhile
            continue
        if fields and pid in (int(entry.name), int(fields[1])):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def versus(command: list[str], configurations: list[str], body: bytes, content_type: str, args) -> None:
    """Each configuration on a server of its own, taking turns run by run (see the docstring's `--versus`)."""
    runs = {(name, clients): [] for name in configurations for clients in args.clients}
    with contextlib.ExitStack() as stack:
        servers = {}
        for index, name in enumerate(configurations):
            own = [*command, f"hydra.run.dir=benchmarks/results/serve-versus/{index}", *name.split()]
            servers[name] = stack.enter_context(serving(own))
            load(servers[name][0], body, content_type, max(args.clients), args.warmup)
        for _ in range(args.repeats):
            for clients in args.clients:
                for name, (port, pid) in servers.items():
                    average, server, client = load_average(), cpu_s(pid), time.process_time()
                    wall, latencies = load(port, body, content_type, clients, args.requests)
                    server, client = (cpu_s(pid) - server, time.process_time() - client)
                    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                    per_request = [1000 * seconds / args.requests for seconds in (server, client)]
                    runs[name, clients].append((args.requests / wall, p50, p99, *per_request, average))
    print("| configuration | clients | requests/s | p50 ms | p99 ms | server CPU ms/request | "
          "load generator CPU ms/request | load |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for (name, clients), results in runs.items():
        rate, p50, p99, server, client, _ = (statistics.median(column) for column in zip(*results, strict=True))
        averages = [result[-1] for result in results]
        print(
            f"| {name or 'defaults'} | {clients} | {rate:.0f} | {p50:.1f} | {p99:.1f} | {server:.2f} | "
            f"{client:.2f} | {min(averages):.1f}-{max(averages):.1f} |"
        )


def upload_timeout_s(overrides: list[str]) -> float:
    given = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("upload_timeout_s=")]
    return given[-1] if given else 30.0  # conf/serve.yaml's


@contextlib.contextmanager
def serving(command: list[str]):
    """(port, pid) of `python -m lenet.serve` started with `command`, stopped after the block."""
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            sys.exit(f"lenet.serve did not start: {line}{server.stdout.read()}")
        threading.Thread(target=server.stdout.read, daemon=True).start()  # the access log, when on: a full pipe blocks
        yield int(found[1]), server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", choices=["pad", "photo"], default="pad")
    parser.add_argument("--soak", type=int, default=0, help="RSS before and after this many requests")
    parser.add_argument("--attacks", action="store_true")
    parser.add_argument("--versus", nargs="+", metavar="OVERRIDES", help='side by side, e.g. --versus "" workers=1')
    parser.add_argument("overrides", nargs="*", help="lenet.serve overrides, e.g. workers=4")
    args = parser.parse_args()

    data = pad_image() if args.image == "pad" else photo_image()
    body, content_type = multipart(data, f"digit.{'png' if args.image == 'pad' else 'jpg'}")
    if args.versus is not None:
        command = [sys.executable, "-m", "lenet.serve", f"ckpt_path={args.ckpt}", "port=0", *args.overrides]
        return versus(command, args.versus, body, content_type, args)
    command = [sys.executable, "-m", "lenet.serve", f"ckpt_path={args.ckpt}", "port=0",
               "hydra.run.dir=benchmarks/results/serve", *args.overrides]  # fmt: skip
    with serving(command) as (port, pid):
        load(port, body, content_type, max(args.clients), args.warmup)
        print(
            f"{args.image} image ({len(data):,} bytes), {args.requests} requests x {args.repeats}, "
            f"{' '.join(args.overrides) or 'defaults'}; server RSS {rss_mb(pid):.0f} MB after the warm-up"
        )
        for clients in args.clients:
            print("  " + throughput(port, body, content_type, clients, args.requests, args.repeats))
        if args.soak:
            before, start = rss_mb(pid), time.perf_counter()
            load(port, body, content_type, 16, args.soak)
            print(
                f"  RSS after {args.soak:,} more requests (16 clients, {args.soak / (time.perf_counter() - start):.0f}"
                f"/s): {rss_mb(pid):.0f} MB, was {before:.0f} MB"
            )
        if args.attacks:
            wait_s = upload_timeout_s(args.overrides) + 15
            attack_body(port, pid, data)
            print("  upload_timeout_s, header_timeout_s: bodies and heads that stop")
            attack_stalled_uploads(port, pid, 50, wait_s)
            attack_stalled_uploads(port, pid, 100, wait_s)
            attack_slow_heads(port, 100, wait_s)
            attack_origins(port, data)
            attack_docs(port)
    if args.attacks:
        attack_decoding(command, data)


if __name__ == "__main__":
    main()
