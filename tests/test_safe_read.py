"""A run dir's YAML records read back as the values YAML's safe loader gives, or refused in one line."""

from pathlib import Path

import pytest
import yaml

from lenet import CONFIG_DIR
from lenet.frame.safe_read import Unreadable, distrust, read_yaml

DOCUMENTS = [
    "",
    "- seed=1\n- optimizer.lr=0.01\n",
    "a: 1\nb: 0x1f\nc: 1_000\nd: 1:30\ne: .inf\nf: ~\ng: 2026-12-08\nh: yes\ni: '1'\nj: !!str 5\nk: [1, 2.5e3, null]\n",
    "run_dir: ${hydra:runtime.output_dir}\nroot: ${oc.env:SECRET,data}\n",
    "a: 1\na: 2\nb: 3\n",  # a key repeated: the last value
    "{1: a, 1.0: b, true: c, null: d}\n",
    "<<: {a: 1}\nb: 2\n",  # a merge key
    "=: 1\n",
    "? [1, 2]\n: x\n",  # a list as a key: refused
    "!!set {a, b}\n",
    "a: !!binary aGVsbG8=\n",
    "!!omap [a: 1]\n",
    "x: !!str [1]\n",
    "- !!python/object/apply:os.system [echo hi]\n",  # code: refused
    "a: &x [1]\nb: *x\n",
    "a:\n  - b: {c: [d, {e: f}]}\n",
    "a: b: c\n",  # not YAML
]


def safe_load(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return Unreadable


@pytest.mark.parametrize("text", DOCUMENTS)
def test_records_read_as_the_safe_loader_reads_them(text, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    try:
        found = read_yaml(path, "config.yaml")
    except Unreadable:
        found = Unreadable
    assert repr(found) == repr(safe_load(text))


def test_every_config_lenet_ships_reads_as_the_safe_loader_reads_it(tmp_path):
    for path in Path(CONFIG_DIR).glob("**/*.yaml"):
        assert read_yaml(path, path.name) == yaml.safe_load(path.read_text()), path


def test_an_override_is_judged_the_same_each_time_it_is_asked():
    """Asked again (a sweep's jobs share their overrides), the same answer; a sweep's launcher is judged as one."""
    for _ in range(2):
        assert distrust("optimizer.lr=0.01") is None
        assert "_target_" in distrust("optimizer._target_=os.system")
        assert "setting of Hydra's" in distrust("hydra.launcher.n_jobs=2")
        assert distrust("hydra.launcher.n_jobs=2", hydra=True) is None
        assert "setting of Hydra's" in distrust("hydra.launcher.n_jobs=2", hydra=False)
