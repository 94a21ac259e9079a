"""GPU benchmark: lenet.train on a GPU with the speed options one at a time, side by side.

    python benchmarks/gpu.py --data-root /usr/share/datasets/fashion-mnist [--dataset fashion_mnist]

Each variant is a `python -m lenet.train trainer=gpu ...` subprocess (the dataset lives on the GPU, normalized
and shuffled there); the table shows its training images/s (metrics.json), whole-process wall time and test
accuracy. Runs in about 3 minutes on one GPU; writes gpu.md and gpu.json into --out.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {
    "default (fp32)": [],
    "experiment=fast": ["experiment=fast"],
    "fast, batch 1024": ["experiment=fast", "data.batch_size=1024", "optimizer.lr=0.6"],
    "fast + bf16-mixed": ["experiment=fast", "trainer.precision=bf16-mixed"],
    "fast + channels_last": ["experiment=fast", "model.channels_last=true"],
    "fast + torch.compile": ["experiment=fast", "model.compile=true"],
}


def run(overrides: list[str], common: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "lenet.train", "trainer=gpu", *common, *overrides, f"hydra.run.dir={run_dir}"]
        began = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if result.returncode:
            return {"error": (result.stderr.strip().splitlines() or ["?"])[-1], "process_wall_s": wall}
        return json.loads((Path(run_dir) / "metrics.json").read_text()) | {"process_wall_s": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU is visible; this benchmark needs one")
    common = [f"data={args.dataset}", f"data.root={args.data_root}", "callbacks.progress_bar.refresh_rate=0"]
    rows = {name: run(overrides, common) for name, overrides in VARIANTS.items()}
    lines = [
        f"# lenet on {torch.cuda.get_device_name()}",
        "",
        "| variant | train images/s | whole-process wall (s) | epochs | test acc |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | |")
        else:
            lines.append(
                f"| {name} | {row['train_images_per_s']:,.0f} | {row['process_wall_s']:.1f} | {row['epochs']} "
                f"| {row['test/acc']:.4f} |"
            )
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(report + "\n")
    (args.out / "gpu.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
