"""A model served over HTTP: what `python -m lenet.serve` runs.

MODEL is a checkpoint of lenet.train or a file of lenet.export (.onnx, .pt2), loaded by
`lenet.inference.trained_model` as lenet.predict loads it; each upload is prepared as predict prepares a file.
The routes (module-level functions on `routes`; what they share is on `app.state`, set by `create_app`):

- `GET /`: the draw-a-digit page (`lenet/inference/page/index.html`: one static file, nothing fetched from elsewhere);
- `POST /predict`: an image (multipart field `file`, or the raw bytes as the body) -> JSON: `prediction`,
  `confidence`, `probabilities` (`[{"class": ..., "probability": ...}]` in the model's class order) and `image`
  (the 28x28 image the model saw, a base64 PNG). Bad input -> 4xx with a JSON `error`;
- `GET /health`: 200 with the model's file name, dataset and classes (the model is loaded before the port opens);
- `/docs`: FastAPI's OpenAPI page (Swagger UI), its scripts served from here (fastapi-offline's copies).

What one request may cost is bounded (conf/serve.yaml, read into `Limits`): its line and headers must arrive within
`header_timeout_s` (lenet.inference.request_limits.HeaderDeadline) and its body within `upload_timeout_s` (408), at
most `max_upload_mb` of it (413); the body waits in a file spooled to disk past 1 MB, not in memory; an image of more
than `max_megapixels`, or that would take more than `max_decoded_mb` of memory decoded, is refused from its header,
before it is decoded (413), and a PNG's text chunks may hold 1 MB (422). Only the Host names of the bound address
(`allowed_hosts`) and web pages of its own origin or of `cors_origins` are answered
(lenet.inference.request_limits.HostAndOrigin), before any body is read.

Threads: decoding, preparing and classifying an upload take about a millisecond of CPU each, so they run in a pool
of `workers` threads and the event loop stays free to accept and read other requests. The classifier is read-only
after loading (torch modules in eval and inference mode, an onnxruntime session: both safe to call from several
threads), so the threads share one model; the pool's size also caps how many decoded images are in memory at once.
Python's GIL lets those threads use little more than one core: `processes` > 1 runs that many server processes on
the one listening socket (uvicorn's supervisor, `Processes`), each a new interpreter that loads the model itself.
"""

import asyncio
import base64
import errno
import functools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib.resources import files
from io import BytesIO
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import BinaryIO

import uvicorn
from fastapi import APIRouter, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from uvicorn.supervisors.multiprocess import Multiprocess

from lenet.frame.errors import UserError
from lenet.images.preparation import ImageError, ImageTooLarge, limit_png_text
from lenet.inference.model_files import load
from lenet.inference.request_limits import HeaderDeadline, HostAndOrigin, Hosts, allowed_hosts, with_header_timeout
from lenet.inference.trained_model import Predictor
from lenet.runs.rundir import model_file

log = logging.getLogger(__name__)

MB = 2**20
ENVELOPE = 64 * 1024  # what a multipart body may hold besides the file: boundaries, part headers, small fields
DRAIN = 64 * MB  # the most of a refused upload read (and dropped) so that its sender gets the 413
SPOOL = MB  # a raw upload beyond this waits on disk, not in memory (Starlette spools multipart files the same way)
PNG_TEXT = MB  # the most of a PNG's text chunks (metadata) kept, decompressed; more: 422 (Pillow's default: 64 MB)
CLOSE = {"connection": "close"}  # a response header: uvicorn closes the connection once it is sent
SHUTDOWN_S = 5  # requests still running when the server is told to stop get this long to finish
START_S = 120  # `processes` > 1: each loads the model in a new interpreter (imports included) within this
SETTINGS = "LENET_SERVE_SETTINGS"  # `processes` > 1: the environment variable that hands each its settings


class ServeError(UserError):
    """The server cannot start: its address, or a missing extra."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM, once uvicorn has shut down gracefully."""


class TooLarge(Exception):
    """The request body grew past the upload limit while it arrived."""


@dataclass(frozen=True)
class Limits:
    """What one request may cost (conf/serve.yaml), as plain values read once: each read of a DictConfig attribute
    costs microseconds."""

    max_upload: int  # bytes
    max_megapixels: float
    max_pixels: int
    max_decoded: int  # bytes
    upload_timeout: float  # seconds

    @classmethod
    def of(cls, cfg: DictConfig) -> "Limits":
        return cls(
            max_upload=round(cfg.max_upload_mb * MB),
            max_megapixels=cfg.max_megapixels,
            max_pixels=round(cfg.max_megapixels * 1e6),
            max_decoded=round(cfg.max_decoded_mb * MB),
            upload_timeout=float(cfg.upload_timeout_s),
        )


def serve(cfg: DictConfig) -> None:
    """Load the model, open the port, serve until Ctrl-C or SIGTERM: in this process, or in `processes` of its own."""
    classifier = load(model_file(cfg.ckpt_path, Path(cfg.outputs_dir)), device=cfg.device)
    set_threads(cfg.threads)
    sock = listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    hosts = allowed_hosts(cfg.allowed_hosts, cfg.host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    serving = functools.partial(
        log.info,
        "Serving %s (%s, %d classes) at %s: the page at /, POST /predict, docs at /docs. Ctrl-C stops.",
        classifier.source.name, classifier.dataset, len(classifier.classes), url,
    )  # fmt: skip
    # uvicorn stops gracefully on the first signal, then raises it again once its own handlers are gone: these turn
    # that into an ordinary end instead of a KeyboardInterrupt traceback (SIGINT) or a kill (SIGTERM).
    previous = {number: signal.signal(number, _stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        if cfg.processes > 1:
            Processes(processes_config(cfg, classifier.source, hosts), [sock], serving).run()
        else:
            server = uvicorn.Server(server_config(create_app(classifier, cfg, hosts), cfg))
            serving()
            server.run(sockets=[sock])
    except Stopped as stop:
        log.info("Stopped (%s)", signal.Signals(stop.args[0]).name)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        sock.close()


def set_threads(threads: int | None) -> None:
    if threads and "torch" in sys.modules:  # a checkpoint or .pt2 runs on torch; an .onnx on onnxruntime alone
        sys.modules["torch"].set_num_threads(threads)


def _stop(number, frame):
    raise Stopped(number)


def server_config(app, cfg: DictConfig, **settings):
    """uvicorn's settings: the app's loggers left to Hydra's logging, no lifespan, a bounded graceful stop, and h11
    with a deadline for request heads (named, not "auto": that would pick httptools wherever it is installed)."""
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop notes; the start line says it
    settings = {"http": with_header_timeout(cfg.header_timeout_s), "log_config": None, **settings}
    return uvicorn.Config(
        app, access_log=cfg.access_log, lifespan="off", timeout_graceful_shutdown=SHUTDOWN_S, **settings
    )


class Processes(Multiprocess):
    """uvicorn's supervisor of server processes (spawned: each a new interpreter that loads the model, so an .onnx
    session's threads and a GPU work in each), sharing the listening socket. It says when they all serve, and a
    stopping signal ends it as it ends one process: each process finishes its requests, then `Stopped`."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], serving: Callable[[], None]):
        super().__init__(config, sockets)
        self.serving = serving
        self.stopped_by: int | None = None

    def init_processes(self) -> None:
        super().init_processes()
        if all(process.wait_until_ready(START_S, self.should_exit) for process in self.processes):
            self.serving()
        elif not (self.should_exit.is_set() or self.signal_queue):  # Ctrl-C while they started: `run` stops
            self.terminate_all()
            self.join_all()
            raise ServeError(f"the server processes did not start (each has {START_S} s): see the lines above")

    def handle_int(self) -> None:
        self.stopped_by = signal.SIGINT
        super().handle_int()

    def handle_term(self) -> None:
        self.stopped_by = signal.SIGTERM
        super().handle_term()

    def run(self) -> None:
        super().run()
        if self.stopped_by is not None:
            raise Stopped(self.stopped_by)


def processes_config(cfg: DictConfig, model: Path, hosts: Hosts) -> uvicorn.Config:
    """uvicorn's settings for `processes` of their own: what each needs to build its app (`app_of_a_process`) goes
    through the environment, which spawned processes inherit; each logs as this one does (Hydra's logging)."""
    settings = {**OmegaConf.to_container(cfg, resolve=True), "ckpt_path": str(model)}  # `last` resolved once
    os.environ[SETTINGS] = json.dumps({"cfg": settings, "hosts": hosts.names, "reached": hosts.reached})
    logging_config = None
    if HydraConfig.initialized():
        logging_config = OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True)
        logging_config.setdefault("loggers", {})["uvicorn.error"] = {"level": "WARNING"}
    http = f"{HeaderDeadline.__module__}:{HeaderDeadline.__name__}"  # by name: a spawned process imports it
    return server_config(
        f"{__name__}:app_of_a_process", cfg, http=http, log_config=logging_config, factory=True, workers=cfg.processes
    )


def app_of_a_process():
    """The app of one of `processes` server processes (uvicorn's app factory, run in the process it spawned)."""
    settings = json.loads(os.environ[SETTINGS])
    cfg = OmegaConf.create(settings["cfg"])
    HeaderDeadline.timeout_s = cfg.header_timeout_s  # this process serves only this app
    classifier = load(Path(cfg.ckpt_path), device=cfg.device)
    set_threads(cfg.threads)
    return create_app(classifier, cfg, Hosts(tuple(settings["hosts"]), settings["reached"]))


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (before uvicorn, which would log a traceback)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ServeError(f"host={host}: no such address ({error.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once, despite TIME_WAIT connections
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} is in use on {host}: pass another port=N (port=0: any free port)") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"host={host} is not an address of this machine") from None
        raise ServeError(f"cannot listen on {host}:{port} ({error.strerror})") from None
    return sock


def answer(classifier: Predictor, file: BinaryIO, max_pixels: int, max_decoded: int) -> dict:
    """The JSON of /predict for one uploaded image (runs in a worker thread)."""
    image = classifier.prepare(file, max_pixels, max_decoded)
    probabilities = classifier.probabilities(image[None])[0]
    best = int(probabilities.argmax())
    png = BytesIO()
    Image.fromarray(image).save(png, "PNG")
    return {
        "prediction": classifier.classes[best],
        "confidence": float(probabilities[best]),
        "probabilities": [
            {"class": name, "probability": float(p)} for name, p in zip(classifier.classes, probabilities, strict=True)
        ],
        "image": base64.b64encode(png.getvalue()).decode("ascii"),
    }


def health(classifier: Predictor, limits: Limits) -> dict:
    return {
        "status": "ok",
        "process": os.getpid(),  # which of `processes` answered
        "model": classifier.source.name,
        "dataset": classifier.dataset,
        "classes": classifier.classes,
        "max_upload_bytes": limits.max_upload,
        "max_megapixels": limits.max_megapixels,
        "max_decoded_bytes": limits.max_decoded,
    }


EXAMPLE = {
    "prediction": "1",
    "confidence": 0.9874,
    "probabilities": [{"class": "0", "probability": 0.0003}, {"class": "1", "probability": 0.9874}, "..."],
    "image": "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAA...",
}
JSON = {"application/json": {}}
UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


routes = APIRouter()  # /, /health and /predict, defined below create_app


def create_app(classifier: Predictor, cfg: DictConfig, hosts):
    """The FastAPI app around one loaded classifier, with the limits of `cfg` (conf/serve.yaml) and the Host names
    `hosts` (lenet.inference.request_limits.allowed_hosts) it answers. The routes are `routes` below; what they
    share is on `app.state`: `classifier`, `limits` (Limits), `page` (the HTML of /) and `pool` (the worker threads)."""
    limit_png_text(PNG_TEXT)
    origins = list(cfg.cors_origins)
    # FastAPI's own /docs and /redoc load their scripts from a CDN (and ReDoc Google's fonts); fastapi-offline serves
    # its copies from /docs-assets. ReDoc is left off: its page still shows a logo from Redocly's CDN.
    app = FastAPIOffline(
        redoc_url=None,
        static_url="/docs-assets",
        title="lenet",
        version="0.1.0",
        description=f"Classify an image with {classifier.source.name} ({classifier.dataset}).",
    )
    app.state.classifier = classifier
    app.state.limits = Limits.of(cfg)
    app.state.page = (files("lenet.inference") / "page" / "index.html").read_text(encoding="utf-8")
    app.state.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="lenet-serve")
    app.include_router(routes)
    app.add_exception_handler(HTTPException, error_as_json)
    if origins:  # CORS headers for the pages listed; HostAndOrigin has refused the others already
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(HostAndOrigin, hosts=hosts, cors_origins=origins)  # added last: runs first
    return app


async def error_as_json(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, error.status_code, headers=error.headers)


@routes.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> str:
    return request.app.state.page


@routes.get("/health", summary="the loaded model (file name, dataset, classes) and the upload limits")
async def get_health(request: Request) -> dict:
    return health(request.app.state.classifier, request.app.state.limits)


@routes.post(
    "/predict",
    summary="classify an image: multipart field `file` (curl -F file=@digit.png), or the raw image as the body",
    openapi_extra=UPLOAD,
    responses={
        200: {
            "description": "`probabilities` in the model's class order; `image`: the 28x28 greyscale image "
            "the model saw, light on dark, as a base64 PNG",
            "content": {"application/json": {"example": EXAMPLE}},
        },
        400: {"description": "no file, or an empty one", "content": JSON},
        403: {"description": "sent by a web page of an origin not in cors_origins", "content": JSON},
        408: {"description": "the body took longer than upload_timeout_s to arrive", "content": JSON},
        413: {
            "description": "larger than max_upload_mb, more pixels than max_megapixels, or more memory decoded "
            "than max_decoded_mb",
            "content": JSON,
        },
        422: {
            "description": "not an image, a damaged one or a blank one, or a PNG with over 1 MB of text",
            "content": JSON,
        },
    },
)
async def predict(request: Request) -> dict:
    state = request.app.state
    limits: Limits = state.limits
    async with AsyncExitStack() as opened:  # the upload's spooled file: closed, its disk space freed, once answered
        try:
            async with asyncio.timeout(limits.upload_timeout):  # a deadline for the whole body, not per chunk
                file = await read_upload(request, limits.max_upload, opened)
        except TimeoutError:
            message = f"the upload did not arrive within {limits.upload_timeout:g} s (upload_timeout_s)"
            raise HTTPException(408, message, headers=CLOSE) from None
        try:
            work = (answer, state.classifier, file, limits.max_pixels, limits.max_decoded)
            return await asyncio.get_running_loop().run_in_executor(state.pool, *work)
        except ImageTooLarge as error:
            raise HTTPException(413, str(error)) from None
        except ImageError as error:
            raise HTTPException(422, str(error)) from None


async def read_upload(request, limit: int, opened: AsyncExitStack) -> BinaryIO:
    """The uploaded file, read up to `limit` bytes, at its start: a multipart field `file`, or else the whole body.

    Spooled: in memory up to 1 MB, on disk beyond; `opened` closes it.
    """
    bound = limit + ENVELOPE
    seen, done = 0, False

    async def receive():
        nonlocal seen, done
        message = await request.receive()
        seen += len(message.get("body", b""))
        done = not message.get("more_body", False)
        if seen > bound:
            raise TooLarge  # a chunked body, or one longer than its Content-Length
        return message

    body = StarletteRequest(request.scope, receive)
    try:
        if int(request.headers.get("content-length") or 0) > bound:
            raise TooLarge  # said up front: refused before anything is parsed
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await opened.enter_async_context(body.form(max_files=1, max_fields=16, max_part_size=ENVELOPE))
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, 'no file: send the image as the multipart field "file" (-F file=@x.png)')
            file, size = upload.file, upload.size
        else:
            file = opened.enter_context(SpooledTemporaryFile(SPOOL))  # noqa: SIM115 (`opened` is the context)
            async for chunk in body.stream():
                file.write(chunk)  # one received chunk (~64 KB), to memory or the page cache: no thread needed
            size = file.tell()
            file.seek(0)
        if size > limit:
            raise TooLarge
    except TooLarge:
        if not done:
            await discard(request.receive, DRAIN)
        raise HTTPException(413, f"the upload is larger than the limit, {limit / MB:g} MB (max_upload_mb)") from None
    except ClientDisconnect:  # nobody is left to answer; without this, uvicorn logs a traceback
        raise HTTPException(400, "the client hung up before the upload was complete") from None
    if not size:
        raise HTTPException(400, "the upload is empty")
    return file


async def discard(receive, most: int) -> None:
    """Read and drop the rest of a refused body: clients that send it all before they read the answer (urllib,
    requests) would otherwise get a reset connection instead of the 413. A body longer than `most` is cut off."""
    dropped = 0
    while dropped <= most:
        message = await receive()
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
