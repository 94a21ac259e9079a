"""Shared fixtures: small synthetic datasets in the real IDX format, and config composition."""

import os

# One intra-op thread in the tests and the processes they start: on 2 cores, two busy processes with
# two threads each slow down many times over, and the fixture data is too small to gain from more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lenet import CONFIG_DIR
from lenet.frame.console import lightning_warnings
from lenet.frame.errors import UserError
from lenet.training.idx import SPLIT_FILES, write_idx

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SIZES = {"train": 1200, "test": 400}
VAL_SIZE = 200


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits whose class is a bright block's cell in a 2x5 grid, jittered, over noise.

    A fifth of the labels are then redrawn at random, so accuracy tops out near 82%: runs that
    differ in any way end with different accuracies, which lets tests tell them apart.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        row, col = 2 + 13 * (label // 5) + rng.integers(-1, 2), 1 + 5 * (label % 5) + rng.integers(-1, 2)
        image[max(row, 0) : row + 8, max(col, 0) : col + 5] = 255
    noisy = rng.random(n) < 0.2
    labels[noisy] = rng.integers(0, 10, noisy.sum())
    return images, labels


def write_dataset(folder: Path, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, (images_name, labels_name)) in enumerate(SPLIT_FILES.items()):
        images, labels = synthetic_split(SIZES[split], seed)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{images_name}{suffix}", images)
        write_idx(folder / f"{labels_name}{suffix}", labels)
    return folder


def pytest_configure(config):
    """Lightning's warnings that do not apply to lenet, ignored as the entry points ignore them (quiet_lightning)."""
    for message in lightning_warnings():
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


@pytest.fixture(scope="session")
def flat_root(tmp_path_factory) -> Path:
    """A plain folder of the four gzipped IDX files, like Debian's dataset-fashion-mnist."""
    return write_dataset(tmp_path_factory.mktemp("flat"), gz=True)


@pytest.fixture(scope="session")
def torchvision_root(tmp_path_factory) -> Path:
    """torchvision's layout: root/MNIST/raw/ with the extracted IDX files."""
    root = tmp_path_factory.mktemp("torchvision")
    write_dataset(root / "MNIST" / "raw", gz=False)
    return root


def fixture_overrides(root: Path, run_dir: Path) -> list[str]:
    """A quick run of the default recipe on fixture data."""
    return [
        f"data.root={root}",
        f"data.val_size={VAL_SIZE}",
        "data.batch_size=32",
        "data.eval_batch_size=200",
        "trainer.max_epochs=3",
        "callbacks.progress_bar.refresh_rate=0",
        f"run_dir={run_dir}",
    ]


def compose_config(*overrides: str, config_name: str = "config"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def datamodule(root: Path, *overrides: str, num_classes: int = 10):
    """The data module the default config builds, on fixture data, loaded."""
    cfg = compose_config(f"data.root={root}", f"data.val_size={VAL_SIZE}", *overrides, "run_dir=x")
    data = instantiate(cfg.data, num_classes=num_classes)
    data.prepare_data()
    data.setup("fit")
    return data


def lenet_command(module: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", f"lenet.{module}", *overrides]


class InterruptAt(L.Callback):
    """Raises KeyboardInterrupt after a given training batch, as Ctrl-C would: `+callbacks.stop=...`."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            raise KeyboardInterrupt


class FirstAttemptStops(L.Callback):
    """In a sweep's first attempt only: job `fail` fails at its first batch and job `interrupt` is interrupted
    (Ctrl-C) after `epochs` epochs; each leaves a file in the folder `marks`, so its next attempt runs through.
    `+callbacks.stop=...` in both attempts: a continued sweep has the same overrides."""

    def __init__(self, marks: str, fail: int = -1, interrupt: int = -1, epochs: int = 1):
        self.marks, self.fail, self.interrupt, self.epochs = Path(marks), fail, interrupt, epochs

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().job.num
        mark = self.marks / str(job)
        if mark.exists():
            return
        if job == self.fail:
            self._leave(mark)
            raise UserError("failing on purpose, the first time")
        if job == self.interrupt and (trainer.current_epoch, batch_idx) == (self.epochs, 0):
            self._leave(mark)
            raise KeyboardInterrupt

    @staticmethod
    def _leave(mark: Path) -> None:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()


class WaitsAfterTheFirstEpoch(L.Callback):
    """In a run's first attempt, waits once its first epoch is saved until it is stopped (SIGTERM, or the signal
    submitit requeues on), at most `seconds`: a requeue then meets a job still training, however fast its epochs.
    `+callbacks.wait=...` in every attempt, as a requeued job's command is its first's."""

    def __init__(self, marks: str, seconds: float = 120):
        self.mark, self.seconds = Path(marks) / "waited", seconds

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch != 1 or self.mark.exists():
            return
        FirstAttemptStops._leave(self.mark)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.05)  # short: a signal's handler runs between two


class StopsBeforeTheTest(L.Callback):
    """Interrupts (Ctrl-C) a run between its last epoch and its test, the first time only (a file in `marks` says
    it happened): as a preemption or a time limit may stop it. `+callbacks.stop=...` in both attempts."""

    def __init__(self, marks: str):
        self.mark = Path(marks) / "stopped"

    def on_test_start(self, trainer, module):
        if not self.mark.exists():
            FirstAttemptStops._leave(self.mark)
            raise KeyboardInterrupt


class OptimizerSpy(L.Callback):
    """Records the first param group's settings at every training step: `+callbacks.spy=...`."""

    seen: list[dict] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        OptimizerSpy.seen.append(dict(trainer.optimizers[0].param_groups[0]))


class GradientSpy(L.Callback):
    """Records (optimizer steps so far, gradient norm) after every training batch: `+callbacks.spy=...`.

    After a batch that stepped, the gradients are those the optimizer used (clipped, accumulated): Lightning zeroes
    them only before the next step's backward pass.
    """

    seen: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        norms = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        GradientSpy.seen.append((trainer.global_step, float(torch.stack(norms).norm())))


class Mirror:
    """A loopback HTTP server that serves a folder's files as a dataset mirror, counting the requests per file.

    torchvision asks for each file twice: once to follow redirects (it hangs up after the headers), then for real.
    """

    def __init__(self, folder: Path, delay: float = 0.0):
        self.requests: dict[str, int] = {}
        self.delay = delay
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                mirror.requests[self.path] = mirror.requests.get(self.path, 0) + 1
                time.sleep(mirror.delay)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the redirect probe hung up
                    super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def md5s(folder: Path) -> list[tuple[str, str]]:
    """(file, md5) of each .gz in `folder`: a torchvision dataset's `resources` for these files."""
    return [(path.name, hashlib.md5(path.read_bytes()).hexdigest()) for path in sorted(folder.glob("*.gz"))]


# Glyphs: for lenet.predict and lenet.export, a dataset whose class is a shape, not a position (MNIST-style
# centring would erase a position), and one checkpoint trained on it through lenet.train.
GLYPH_SIZES = {"train": 1000, "test": 200}


def glyph_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits drawn with Pillow's own font at random sizes, weights, positions and slants, laid out as MNIST's."""
    from PIL import Image, ImageDraw, ImageFont

    from lenet.images.preparation import prepare

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.empty((n, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        canvas = Image.new("L", (72, 72))
        font = ImageFont.load_default(size=int(rng.integers(30, 50)))
        position = (int(rng.integers(8, 24)), int(rng.integers(0, 12)))
        weight = int(rng.integers(0, 3))
        ImageDraw.Draw(canvas).text(position, str(label), fill=255, font=font, stroke_width=weight, stroke_fill=255)
        image[:] = prepare(canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR))
    return images, labels


@pytest.fixture(scope="session")
def glyph_folder(tmp_path_factory) -> Path:
    """The glyphs as a user's own images (data=images): one folder per class, 0 ... 9, of PNG files, dark on light,
    56 pixels a side, as a scan would be."""
    from PIL import Image

    root = tmp_path_factory.mktemp("glyph_folder")
    images, labels = glyph_split(300, seed=5)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(255 - image).resize((56, 56)).save(root / str(label) / f"{i}.png")
    return root


def shared(tmp_path_factory, name: str):
    """A folder every xdist worker of the session shares (the session's, not a worker's), and the file lock under
    which the first worker to ask makes what it holds: an expensive fixture made once, not once per worker."""
    from filelock import FileLock  # torch's own dependency

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return root / name, FileLock(root / f"{name}.lock")


def made_once(tmp_path_factory, name: str, make) -> tuple[Path, dict]:
    """`make(folder)`'s JSON-able record, made once for the session in a shared folder (see `shared`)."""
    folder, lock = shared(tmp_path_factory, name)
    record = folder.with_suffix(".json")
    with lock:
        if not record.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            record.write_text(json.dumps(make(folder)))
    return folder, json.loads(record.read_text())


def finished(done: subprocess.CompletedProcess) -> dict:
    """A finished process as a record `made_once` keeps, and `as_process` gives back."""
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def as_process(record: dict) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], **record)


@pytest.fixture(scope="session")
def glyph_checkpoint(tmp_path_factory) -> Path:
    """best.ckpt of a short lenet.train run on the glyphs; trained once for all xdist workers (a file lock)."""
    from lenet.training.fit import train

    shared_dir, lock = shared(tmp_path_factory, "glyph")
    run_dir, root = shared_dir / "run", shared_dir / "data"
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    with lock:
        if not checkpoint.is_file():
            root.mkdir(parents=True, exist_ok=True)
            for seed, (split, (images_name, labels_name)) in enumerate(SPLIT_FILES.items()):
                images, labels = glyph_split(GLYPH_SIZES[split], seed)
                write_idx(root / f"{images_name}.gz", images)
                write_idx(root / f"{labels_name}.gz", labels)
            recipe = ["trainer.max_epochs=4", "optimizer.lr=0.05", "logger=none"]  # sure of the glyphs in 4 epochs
            train(compose_config(*fixture_overrides(root, run_dir), *recipe))
    return checkpoint


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """The one-node Slurm cluster (tests/slurm.py), started if it is not: the environment of a process that uses it,
    with this folder on PYTHONPATH for the callbacks tests give its jobs."""
    import slurm as cluster

    try:
        env = cluster.start()
    except cluster.Unavailable as why:
        pytest.skip(f"no Slurm cluster here: {why}")
    tests = str(Path(__file__).parent)
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
