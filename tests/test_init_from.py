"""init_from: a new run that starts from a trained model's weights (its own config, optimizer and schedule), and how a
finished run trains longer. Real lenet.train runs on fixture data, starting from the glyph model."""

import json
import logging
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import compose_config, fixture_overrides, synthetic_split, write_idx
from lenet import cli
from lenet.frame.errors import ConfigError, ModelError
from lenet.runs import replay
from lenet.training.fit import TrainingInterrupted, train
from lenet.training.idx import SPLIT_FILES

QUICK = ["trainer.max_epochs=1", "logger=none"]
SPY = "+callbacks.spy._target_=test_init_from.FirstWeights"


class FirstWeights(L.Callback):
    """The network's weights as training starts, before the first step: `+callbacks.spy=...`."""

    seen: list[dict] = []

    def on_train_start(self, trainer, module):
        FirstWeights.seen.append({name: weight.clone() for name, weight in module.net.state_dict().items()})


def saved_weights(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {name.removeprefix("net."): weight for name, weight in state.items() if name.startswith("net.")}


def quick_run(root: Path, run_dir: Path, *overrides: str) -> dict:
    FirstWeights.seen.clear()
    return train(compose_config(*fixture_overrides(root, run_dir), *QUICK, SPY, *overrides))


@pytest.fixture
def five_classes(tmp_path) -> Path:
    """The fixture's data with 5 classes (its labels modulo 5): another class set than the glyphs' 10 digits."""
    root = tmp_path / "five"
    root.mkdir()
    for seed, (split, (images_name, labels_name)) in enumerate(SPLIT_FILES.items()):
        images, labels = synthetic_split({"train": 600, "test": 200}[split], seed)
        write_idx(root / f"{images_name}.gz", images)
        write_idx(root / f"{labels_name}.gz", labels % 5)
    return root


@pytest.mark.parametrize("given", ["file", "run dir"])
def test_a_new_run_starts_from_the_weights_of_a_checkpoint_or_a_run_dir(given, glyph_checkpoint, flat_root, tmp_path,
                                                                        caplog):  # fmt: skip
    """Its own run: epoch 0, its own schedule; the glyph model's weights before the first step, every layer."""
    source_dir = glyph_checkpoint.parents[1]
    init_from, expected = {
        "file": (source_dir / "checkpoints" / "last.ckpt",) * 2,
        "run dir": (source_dir, glyph_checkpoint),  # a run dir means its best.ckpt
    }[given]
    caplog.set_level(logging.INFO)
    metrics = quick_run(flat_root, tmp_path / "run", f"init_from={init_from}")
    [first] = FirstWeights.seen
    source = saved_weights(expected)
    assert first.keys() == source.keys()
    assert all(torch.equal(first[name], source[name]) for name in source), "every weight, the head's too"
    assert f"Starting from {expected} (its weights). Run dir: " in caplog.text
    assert metrics["epochs"] == 1, "its own epochs, from 0: the glyph run's 4 are not counted"
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and saved["config"]["init_from"] == str(init_from)
    assert not torch.equal(
        saved_weights(tmp_path / "run" / "checkpoints" / "last.ckpt")["0.weight"], source["0.weight"]
    )
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["init_from"] == str(expected.resolve())


def test_a_head_for_another_class_count_is_rebuilt_and_the_start_line_says_so(glyph_checkpoint, five_classes,
                                                                             tmp_path, caplog):  # fmt: skip
    """Settings that add no weights may differ too (dropout shifts the layers' indices; the activation)."""
    caplog.set_level(logging.INFO)
    other = ["model.num_classes=5", "model.dropout=0.2", "model.activation=tanh"]
    metrics = quick_run(five_classes, tmp_path / "run", f"init_from={glyph_checkpoint}", *other)
    assert f"Starting from {glyph_checkpoint} (its weights; the head rebuilt for 5 classes: it had 10)." in caplog.text
    [first], source = FirstWeights.seen, saved_weights(glyph_checkpoint)
    # LeNet: conv 0, conv 3, fc 7, fc 10, head 13 with dropout (fc 7, 9, 11 without)
    for mine, its in [("0", "0"), ("3", "3"), ("7", "7"), ("10", "9")]:
        for part in ("weight", "bias"):
            assert torch.equal(first[f"{mine}.{part}"], source[f"{its}.{part}"])
    assert first["13.weight"].shape == (5, 84) and source["11.weight"].shape == (10, 84)
    assert metrics["test/acc"] > 0.3, "the rebuilt head trains (chance: 0.2)"


def test_weights_of_other_shapes_are_refused_in_one_line_naming_the_layer_and_both_shapes(glyph_checkpoint, flat_root,
                                                                                         tmp_path):  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        quick_run(flat_root, tmp_path / "run", f"init_from={glyph_checkpoint}", "model.batch_norm=true")
    assert str(refused.value) == (
        f"init_from={glyph_checkpoint}: its weights do not fit this run's LeNet(batch_norm=True): its conv1 is "
        "weight 6x1x5x5, bias 6 there, weight 6x1x5x5 here. Only the head may differ (model.num_classes): build the "
        "model it was trained as, LeNet()"
    )
    assert not (tmp_path / "run").exists(), "refused before the run wrote anything"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["ckpt_path={ckpt}"],
            "init_from={ckpt} with ckpt_path={ckpt}: a resume goes on with its own run's weights, "
            "init_from starts a new run from another's; pass one of them",
        ),
        (["init_from={missing}"], "init_from={missing}: no such checkpoint file or run dir"),
        (
            ["init_from={empty}"],
            "init_from={empty} is a folder without checkpoints/best.ckpt or checkpoints/last.ckpt: "
            "give a run dir of lenet.train or a checkpoint file",
        ),
    ],
    ids=["with-ckpt_path", "missing", "not-a-run-dir"],
)
def test_init_from_that_cannot_start_a_run_is_refused_in_one_line(overrides, message, glyph_checkpoint, flat_root,
                                                                  tmp_path):  # fmt: skip
    names = {"ckpt": glyph_checkpoint, "missing": tmp_path / "nowhere.ckpt", "empty": tmp_path}
    with pytest.raises(ConfigError) as refused:
        quick_run(flat_root, tmp_path / "run", f"init_from={glyph_checkpoint}", *(o.format(**names) for o in overrides))
    assert str(refused.value) == message.format(**names)


@pytest.mark.parametrize("damage", ["cut short", "hostile"])
def test_a_damaged_or_hostile_file_is_refused_by_the_checkpoint_reader(damage, glyph_checkpoint, flat_root, tmp_path):
    """Read by Checkpoint.open, weights_only and every part checked: nothing in it runs or chooses what is built."""
    path = tmp_path / "model.ckpt"
    if damage == "cut short":
        path.write_bytes(glyph_checkpoint.read_bytes()[:5000])
        expected = rf"{path} is damaged \(it ends after 5,000 bytes"
    else:
        contents = torch.load(glyph_checkpoint, weights_only=True)
        torch.save({**contents, "config": {"init": Path("/etc/passwd")}}, path)  # an object, not plain data
        expected = rf"{path} holds Python objects beyond tensors and plain values, which could run code"
    with pytest.raises(ModelError, match=expected):
        quick_run(flat_root, tmp_path / "run", f"init_from={path}")


def test_a_resume_of_a_run_started_from_init_from_goes_on_from_its_own_weights(glyph_checkpoint, flat_root, tmp_path):
    """Interrupted in its second epoch, resumed (a new run dir, init_from left out; and the same run dir, as a
    requeued job, init_from still given, its file gone since): it ends exactly as the uninterrupted run, init_from not
    read again; the resumed run's checkpoints still say where it started."""
    source = Path(shutil.copy(glyph_checkpoint, tmp_path / "source.ckpt"))
    start = [f"init_from={source}", "trainer.max_epochs=2", "model.dropout=0.3", "logger=none"]
    whole = train(compose_config(*fixture_overrides(flat_root, tmp_path / "whole"), *start))
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C after the first
    stop = ["+callbacks.stop._target_=conftest.InterruptAt", "+callbacks.stop.epoch=1", "+callbacks.stop.batch=5"]
    for cut in ("cut", "requeued"):
        with pytest.raises(TrainingInterrupted):
            train(compose_config(*fixture_overrides(flat_root, tmp_path / cut), *start, *stop))
        signal.signal(signal.SIGINT, handler)
    source.unlink()
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    no_init = [o for o in start if not o.startswith("init_from")]
    resumed = train(compose_config(*fixture_overrides(flat_root, tmp_path / "resumed"), *no_init, f"ckpt_path={last}"))
    requeued = train(compose_config(*fixture_overrides(flat_root, tmp_path / "requeued"), *start))
    timings = ("wall_s", "train_images_per_s", "attempts")
    numbers = [{k: v for k, v in m.items() if k not in timings} for m in (whole, resumed, requeued)]
    assert numbers[1] == numbers[0] and numbers[2] == numbers[0]
    for run in ("resumed", "requeued"):
        saved = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["config"]["init_from"] == str(source)


def test_a_finished_run_trains_longer_as_a_resume_under_a_constant_rate_else_as_a_new_run(glyph_checkpoint, flat_root,
                                                                                         tmp_path, caplog):  # fmt: skip
    """Its run dir is never changed: a resume goes into a new one. Under a schedule that spans the run (onecycle, the
    default) only a new run from its weights may train longer, and the refusals say so."""
    glyphs = ["optimizer.lr=0.05", "logger=none"]  # its recipe (conftest.glyph_checkpoint), on other data
    onecycle = [*fixture_overrides(flat_root, tmp_path / "x"), *glyphs, f"ckpt_path={glyph_checkpoint}"]
    for longer, said in [("4", ", with a fresh schedule"), ("6", "")]:
        with pytest.raises(ConfigError) as refused:
            train(compose_config(*onecycle, f"trainer.max_epochs={longer}"))
        assert f"init_from={glyph_checkpoint} starts one from its weights{said}" in str(refused.value)
    constant = [*fixture_overrides(flat_root, tmp_path / "one"), "scheduler=none", *QUICK]
    train(compose_config(*constant))
    last = tmp_path / "one" / "checkpoints" / "last.ckpt"
    finished = {path: path.read_bytes() for path in (tmp_path / "one").rglob("*") if path.is_file()}
    with pytest.raises(ConfigError, match=r"pass a larger trainer.max_epochs to train longer \(its run goes on\), or "):
        train(compose_config(*constant, f"ckpt_path={last}", f"run_dir={tmp_path / 'again'}"))
    caplog.set_level(logging.INFO)
    more = train(compose_config(*constant, f"ckpt_path={last}", "trainer.max_epochs=2", f"run_dir={tmp_path / 'two'}"))
    assert f"Resuming {last} after epoch 1." in caplog.text and more["epochs"] == 2
    assert {path: path.read_bytes() for path in (tmp_path / "one").rglob("*") if path.is_file()} == finished


def test_a_finished_run_dir_refuses_training_in_it_and_names_init_from(tmp_path):
    finished = tmp_path / "run"
    (finished / ".hydra").mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(cli.RunDirTaken) as refused, cli.held(finished, "train"):
        pass
    assert str(refused.value) == (
        f"{finished} holds a finished run (metrics.json), kept as it is: run lenet.train in a new run dir (leave out "
        f"hydra.run.dir); to train it longer or on other data, start that run from its weights: init_from={finished}"
    )


def test_init_from_is_part_of_the_recipe_a_rerun_repeats():
    assert replay.left_out("init_from") == ""
    assert compose_config().init_from is None
