"""lenet.eval on any data: a model tested on other data of its classes with one command (data=NAME data.root=DIR), a
data set of other classes refused in one line naming both, --help listing only what eval takes, and any other
override refused in one line naming those."""

import json
import logging
import re
import subprocess

import pytest

from conftest import GLYPH_SIZES, compose_config, glyph_split, lenet_command
from lenet.cli import TAKES, check, command_line_refusal
from lenet.frame.errors import ConfigError
from lenet.training.fit import evaluate
from lenet.training.idx import SPLIT_FILES, write_idx


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The refusal of a finished command: exit status 1, one line on stderr, no traceback."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory):
    """Another set of the glyph digits (other seeds: other images, the same classes), as a folder of IDX files."""
    root = tmp_path_factory.mktemp("other-digits")
    sizes = {"train": 300, "test": GLYPH_SIZES["test"]}
    for seed, (split, (images_name, labels_name)) in enumerate(SPLIT_FILES.items(), start=7):
        images, labels = glyph_split(sizes[split], seed)
        write_idx(root / f"{images_name}.gz", images)
        write_idx(root / f"{labels_name}.gz", labels)
    return root


def test_a_model_tested_on_other_data_of_its_classes_says_which_data_it_measured(
    glyph_checkpoint, other_digits, tmp_path, caplog
):
    """data=mnist data.root=DIR: the glyph model (an MNIST model) on another digit set, as the command runs it."""
    cfg = compose_config(
        f"ckpt_path={glyph_checkpoint}", "data=mnist", f"data.root={other_digits}", f"run_dir={tmp_path / 'eval'}",
        config_name="eval",
    )  # fmt: skip
    check(cfg, "data")  # what lenet.cli does before the work: nulls dropped ("as saved"), then validated
    caplog.set_level(logging.INFO)
    metrics = evaluate(cfg)
    assert metrics["data"] | {"test_labels_sha256": "x"} == {
        "dataset": "mnist", "root": str(other_digits.resolve()), "train_images": 100, "val_images": 200,
        "test_images": GLYPH_SIZES["test"], "test_labels_sha256": "x",
    }  # fmt: skip
    assert metrics["test/acc"] > 0.8  # the glyphs' classes, other images: the model knows them
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["data"] == metrics["data"]
    assert f"mnist from {other_digits.resolve()}" in caplog.text  # the start line names the data measured
    assert "are not those" not in caplog.text  # asked for on purpose: no warning


def test_a_data_set_of_other_classes_is_refused_before_anything_loads(glyph_checkpoint, tmp_path):
    for other, names in (("fashion_mnist", "T-shirt/top, Trouser, Pullover"), ("kmnist", "o, ki, su, tsu")):
        cfg = compose_config(
            f"ckpt_path={glyph_checkpoint}", f"data={other}", f"data.root={tmp_path / 'nothing here'}",
            f"run_dir={tmp_path / 'eval'}", config_name="eval",
        )  # fmt: skip
        check(cfg, "data")
        with pytest.raises(ConfigError) as refused:
            evaluate(cfg)
        refusal = str(refused.value)
        assert refusal.startswith(
            f"the model's classes are mnist's (0, 1, 2, 3, 4, 5, 6, 7, 8, 9); {other}'s are others ({names}"
        )
        assert refusal.endswith("test it on data of its own classes (data=mnist data.root=FOLDER)")


@pytest.mark.slow
def test_a_data_set_of_other_classes_is_refused_in_one_line_naming_both(glyph_checkpoint, tmp_path):
    done = subprocess.run(
        lenet_command(
            "eval", f"ckpt_path={glyph_checkpoint}", "data=fashion_mnist", f"data.root={tmp_path}",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = one_line_error(done)
    assert line.startswith(
        "error: the model's classes are mnist's (0, 1, 2, 3, 4, 5, 6, 7, 8, 9); fashion_mnist's are others "
        "(T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot)"
    ), line
    assert not (tmp_path / "eval").exists()  # refused before anything was written


def test_help_lists_only_what_eval_takes():
    done = subprocess.run(lenet_command("eval", "--help"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^  ([a-z_.]+)=", done.stdout.split("== What it takes ==")[1], flags=re.M)
    assert tuple(listed) == TAKES["eval"]
    expected = "data=NAME                  a data set of the model's classes (fashion_mnist, images, kmnist, mnist)"
    assert expected in done.stdout
    for training_only in ("optimizer", "scheduler", "callbacks", "max_epochs", "data.batch_size", "seed"):
        assert training_only not in done.stdout


@pytest.mark.parametrize("override", ["optimizer.lr=0.1", "trainer.max_epochs=3", "optimizer=adam", "+data.seed=1"])
def test_an_override_eval_does_not_take_is_one_line_naming_what_it_takes(override):
    refusal = command_line_refusal("eval", ["ckpt_path=x", override])
    key = override.lstrip("+").split("=")[0]
    assert refusal == (
        f"{key} is not a setting of lenet.eval (it takes ckpt_path, data=NAME, data.root, data.eval_batch_size, "
        "trainer=NAME, trainer.accelerator, trainer.devices, trainer.precision, trainer.limit_test_batches, "
        "outputs_dir)"
    )


def test_the_refusal_reaches_the_user_as_one_line(tmp_path):
    """Before Hydra and before torch: as `lenet.eval ... trainer.max_epochs=3` answers at a shell."""
    done = subprocess.run(
        lenet_command("eval", "ckpt_path=x", "trainer.max_epochs=3"), cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert one_line_error(done).startswith("error: trainer.max_epochs is not a setting of lenet.eval (it takes")
    assert command_line_refusal("eval", ["ckpt_path=x", "data.rot=/d"]).startswith(
        "data.rot is not a setting of lenet.eval: did you mean data.root? (it takes"
    )
    assert command_line_refusal("eval", ["ckpt_path=x", "+data=mnist"]) == (
        "data is a setting of lenet.eval already: pass data=mnist, without +"
    )


@pytest.mark.parametrize(
    "overrides",
    [["data=mnist", "data.root=/d"], ["data=kmnist", "data.eval_batch_size=50"], ["trainer=cpu", "trainer.devices=1"],
     ["data.root=/d", "outputs_dir=o", "hydra.run.dir=r"]],
)  # fmt: skip
def test_what_eval_takes_passes_the_command_line_check(overrides):
    assert command_line_refusal("eval", ["ckpt_path=x", *overrides]) is None
