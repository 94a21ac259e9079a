"""What a run ran on and how to run it again: `env.json` in every run dir."""

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("lenet", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "omegaconf")
SOURCE = Path(__file__).parents[3]  # the checkout, when lenet runs from one (an editable install); not from a wheel


def environment(command: str | None, device: torch.device, threads_chosen: str | None = None) -> dict:
    """`threads_chosen`: how the run chose its thread count (lenet.training.cpus.Threads.how); None: torch's default."""
    return {
        "command": command,
        **git_state(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "threads_chosen": threads_chosen or "torch's default",
        "platform": platform.platform(),
    }


def git_state() -> dict:
    """The checkout's commit and whether it has changes; nulls from a wheel, or when git cannot tell."""
    if not (SOURCE / ".git").exists():
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, check=True, timeout=10)
    return done.stdout.strip()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or platform.processor() or platform.machine()


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None  # not Linux
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
