"""The wheel carries its configs: installed, not editable, `python -m lenet.train` runs from anywhere."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import VAL_SIZE

ROOT = Path(__file__).parents[1]


def test_the_installed_wheel_trains_from_a_temp_dir(flat_root, tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, ROOT], check=True)
    wheel = next(dist.glob("lenet-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install

    where = subprocess.run(
        [sys.executable, "-c", "import lenet; print(lenet.CONFIG_DIR)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()) == site / "lenet" / "conf"
    assert (site / "lenet" / "inference" / "page" / "index.html").is_file(), "lenet.serve's page"
    assert (site / "hydra_plugins" / "lenet_launcher" / "__init__.py").is_file(), "the Slurm launcher, for Hydra"

    overrides = [f"data.root={flat_root}", f"data.val_size={VAL_SIZE}", "debug=fast_dev_run"]
    run = subprocess.run(
        [sys.executable, "-m", "lenet.train", *overrides], cwd=work, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert len(list(work.glob("outputs/*/*/metrics.json"))) == 1
    env = json.loads(next(work.glob("outputs/*/*/env.json")).read_text())
    assert (env["git_commit"], env["git_dirty"]) == (None, None), "a wheel is no checkout"
