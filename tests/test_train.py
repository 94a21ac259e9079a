"""A real training run on fixture data, and what it leaves behind."""

import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.api_pb2 import STATUS_SUCCESS
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from conftest import (
    SIZES,
    GradientSpy,
    OptimizerSpy,
    compose_config,
    datamodule,
    fixture_overrides,
    lenet_command,
    synthetic_split,
    write_dataset,
    write_idx,
)
from lenet.frame.errors import ConfigError
from lenet.training import cpus, misclassified
from lenet.training.checkpoints import Checkpoint
from lenet.training.fit import TrainingInterrupted, evaluate, train
from lenet.training.hparams import HPARAM_METRICS
from lenet.training.module import EVAL_CHUNK, LeNetModule
from lenet.training.network import LeNet

EPOCHS = 3


@pytest.fixture(scope="module")
def run(flat_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    metrics = train(compose_config(*fixture_overrides(flat_root, run_dir)))
    return run_dir, metrics


@pytest.fixture(scope="module")
def events(run):
    accumulator = EventAccumulator(str(run[0]), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return accumulator.Reload()


def test_training_learns_far_above_chance(run):
    _, metrics = run
    assert metrics["val/acc_best"] > 0.6 and metrics["test/acc"] > 0.6  # chance is 0.1, the fixture's ceiling ~0.82
    assert metrics["train/loss"] < 2.0  # ln(10) = 2.30 at chance


def test_metrics_json_holds_the_final_metrics_under_their_logged_names(run):
    run_dir, metrics = run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == metrics  # floats survive JSON exactly
    for key in ["train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"]:
        assert 0 <= written[key] < 10, key
    assert written["epochs"] == EPOCHS
    assert written["wall_s"] > 0 and written["train_images_per_s"] > 0


def test_best_and_last_checkpoints_are_written(run):
    run_dir, _ = run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, EPOCHS * 32)  # every epoch, improved or not


def test_tensorboard_gets_curves_lr_and_a_confusion_matrix(events, run):
    scalars = events.Tags()["scalars"]
    for tag in ["train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "lr-SGD"]:
        assert tag in scalars, tag
    assert len(events.Scalars("val/acc")) == EPOCHS
    assert "test/confusion_matrix" in events.Tags()["images"]


def test_tensorboard_hparams_carry_the_config_and_the_real_final_accuracy(events, run):
    _, metrics = run
    session = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["optimizer"].string_value == "SGD" and hparams["lr"].number_value == pytest.approx(0.05)
    assert hparams["batch_size"].number_value == 32
    assert "hp_metric" not in events.Tags()["scalars"]  # Lightning's placeholder -1 is off
    assert events.Scalars("hp/test_acc")[-1].value == pytest.approx(metrics["test/acc"])
    assert events.Scalars("hp/val_acc_best")[-1].value == pytest.approx(metrics["val/acc_best"])


def hparams_experiment(events):
    return HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment


def test_hparams_metrics_are_logged_once_with_their_final_values(events, run):
    _, metrics = run
    for tag, name in HPARAM_METRICS.items():
        points = events.Scalars(tag)
        assert len(points) == 1 and points[0].step > 0, f"{tag}: no placeholder at step 0, one final point"
        assert points[0].value == pytest.approx(metrics[name])
    experiment = hparams_experiment(events)
    assert sorted(info.name.tag for info in experiment.metric_infos) == sorted(HPARAM_METRICS)
    end = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_end_info"])
    assert end.session_end_info.status == STATUS_SUCCESS, "written when the run ends"
    assert not any(info.differs for info in experiment.hparam_infos), "no command line, nothing swept: none first"


def test_a_run_without_validation_has_no_validation_hparams_metrics(flat_root, tmp_path):
    kept = [o for o in fixture_overrides(flat_root, tmp_path) if not o.startswith(("data.val_size", "trainer.max"))]
    no_validation = ["data.val_size=0", "trainer.limit_val_batches=0", "callbacks.checkpoint=null"]
    metrics = train(compose_config(*kept, *no_validation, "trainer.max_epochs=1"))
    assert "val/acc" not in metrics
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    assert [point.value for point in events.Scalars("hp/test_acc")] == [pytest.approx(metrics["test/acc"])]
    assert not {"hp/val_acc", "hp/val_acc_best"} & set(events.Tags()["scalars"]), "absent, not 0"
    assert {"hp/val_acc", "hp/val_acc_best"} <= {info.name.tag for info in hparams_experiment(events).metric_infos}


def test_tensorboard_shows_the_most_confident_errors_next_to_the_confusion_matrix(events, run):
    assert {"test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"])
    errors = round((1 - run[1]["test/acc"]) * SIZES["test"])
    assert errors > misclassified.SHOWN, "the fixture's test set has more errors than the grid shows"
    image = events.Images("test/misclassified")[-1]
    rows = misclassified.SHOWN // misclassified.COLUMNS
    assert (image.width, image.height) == (misclassified.COLUMNS * misclassified.CELL_WIDTH, rows * (84 + 28))


def test_misclassified_keeps_the_most_confident_errors_of_all_batches():
    torch.manual_seed(0)
    logits, labels = torch.randn(500, 10) * 3, torch.randint(0, 10, (500,))
    images = torch.arange(500.0).view(-1, 1, 1, 1).expand(500, 1, 28, 28)  # each image holds its index
    kept = misclassified.Misclassified()
    for batch in torch.arange(500).split(70):
        kept.update(images[batch], logits[batch], labels[batch])
    shown, true, predicted, confidence = kept.compute()
    p, guess = logits.softmax(1).max(1)
    wrong = (guess != labels).nonzero().flatten()
    expected = wrong[p[wrong].argsort(descending=True)][: misclassified.SHOWN]
    assert shown[:, 0, 0, 0].long().tolist() == expected.tolist()
    assert true.tolist() == labels[expected].tolist() and predicted.tolist() == guess[expected].tolist()
    assert confidence.tolist() == pytest.approx(p[expected].tolist())
    # Under DDP each rank keeps its own top 64; the sync stacks them (ranks x 64) and compute pools them.
    ranks = [misclassified.Misclassified() for _ in range(2)]
    for i, batch in enumerate(torch.arange(500).split(35)):
        ranks[i % 2].update(images[batch], logits[batch], labels[batch])
    for state in ("confidence", "images", "target", "predicted"):
        setattr(ranks[0], state, torch.stack([getattr(rank, state) for rank in ranks]))
    assert ranks[0].compute()[0][:, 0, 0, 0].long().tolist() == expected.tolist()
    picture = misclassified.grid(shown[:3] * 0, true[:3], predicted[:3], confidence[:3], ["0 - zero"] * 10, 0.5, 0.5)
    assert picture.shape == (84 + 28, misclassified.COLUMNS * misclassified.CELL_WIDTH, 3)


def test_eval_on_the_best_checkpoint_reproduces_the_test_accuracy(run, tmp_path):
    run_dir, metrics = run
    eval_dir = tmp_path / "eval"
    command = lenet_command("eval", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={eval_dir}")
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_a_run_dir_as_ckpt_path_means_its_best_checkpoint_to_eval_and_its_last_to_resume(run, flat_root, tmp_path):
    run_dir, metrics = run
    evaluated = subprocess.run(
        lenet_command("eval", f"ckpt_path={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] == pytest.approx(
        metrics["test/acc"]
    )
    resume = [*fixture_overrides(flat_root, tmp_path / "resumed"), f"ckpt_path={run_dir}"]
    with pytest.raises(ConfigError, match=f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} has trained all 3"):
        train(compose_config(*resume))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"ckpt_path={empty} is a folder without checkpoints/best.ckpt"):
        train(compose_config(*fixture_overrides(flat_root, tmp_path / "x"), f"ckpt_path={empty}"))


def test_resuming_from_last_checkpoint_continues_the_epoch_count(flat_root, tmp_path):
    # A constant LR: OneCycle's length is fixed at the start, so a finished OneCycle run cannot be extended.
    constant = [*fixture_overrides(flat_root, tmp_path / "first"), "scheduler=none"]
    first = train(compose_config(*constant, "trainer.max_epochs=2"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resume = [*fixture_overrides(flat_root, tmp_path / "resumed"), "scheduler=none", f"ckpt_path={last}"]
    resumed = train(compose_config(*resume, "trainer.max_epochs=3"))
    assert (first["epochs"], resumed["epochs"]) == (2, 3)
    assert resumed["val/acc_best"] >= first["val/acc_best"]  # the best so far survives the restart
    before = {e.step: e.value for e in EventAccumulator(str(tmp_path / "first")).Reload().Scalars("val/acc")}
    after = {e.step: e.value for e in EventAccumulator(str(tmp_path / "resumed")).Reload().Scalars("val/acc")}
    assert [step for step in after if step not in before] == [3 * 32 - 1]  # one new epoch, ending at step 96
    assert all(after[step] == before[step] for step in after if step in before)  # Lightning re-logs the last one


@pytest.mark.parametrize(
    "option", ["model.channels_last=true", pytest.param("model.compile=true", marks=pytest.mark.slow)]
)
def test_speed_options_train_and_leave_plain_checkpoints(option, flat_root, tmp_path):
    metrics = train(compose_config(*fixture_overrides(flat_root, tmp_path), option, "trainer.max_epochs=2"))
    assert metrics["test/acc"] > 0.3
    state = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    LeNet().load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})


def final_numbers(metrics: dict) -> dict:
    """Everything but the timings, and how many attempts they cover."""
    return {k: v for k, v in metrics.items() if k not in ("wall_s", "train_images_per_s", "attempts")}


def test_the_same_config_and_seed_give_identical_metrics(flat_root, tmp_path):
    runs = [train(compose_config(*fixture_overrides(flat_root, tmp_path / str(i)), "model.dropout=0.3")) for i in "12"]
    assert final_numbers(runs[0]) == final_numbers(runs[1])
    other_seed = train(compose_config(*fixture_overrides(flat_root, tmp_path / "3"), "model.dropout=0.3", "seed=7"))
    assert final_numbers(other_seed) != final_numbers(runs[0])


def test_an_interrupted_and_resumed_run_ends_as_an_uninterrupted_one(flat_root, tmp_path):
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C after the first
    common = ["model.dropout=0.3"]  # dropout draws random numbers: the resumed run must continue them
    whole = train(compose_config(*fixture_overrides(flat_root, tmp_path / "whole"), *common))
    stop = ["+callbacks.stop._target_=conftest.InterruptAt", "+callbacks.stop.epoch=1", "+callbacks.stop.batch=5"]
    resume_hint = r"1 epoch\(s\) saved. Resume with the same overrides plus ckpt_path="
    with pytest.raises(TrainingInterrupted, match=resume_hint):
        train(compose_config(*fixture_overrides(flat_root, tmp_path / "cut"), *common, *stop))
    signal.signal(signal.SIGINT, handler)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = train(compose_config(*fixture_overrides(flat_root, tmp_path / "resumed"), *common, f"ckpt_path={last}"))
    assert final_numbers(resumed) == final_numbers(whole)


def test_ckpt_path_last_takes_the_newest_last_checkpoint(flat_root, tmp_path, caplog):
    outputs = [f"outputs_dir={tmp_path}", "trainer.max_epochs=1", "scheduler=none"]
    with pytest.raises(ConfigError, match=f"ckpt_path=last: no run under {tmp_path}/ has a last.ckpt"):
        train(compose_config(*fixture_overrides(flat_root, tmp_path / "a"), *outputs, "ckpt_path=last"))
    for run in "ab":
        train(compose_config(*fixture_overrides(flat_root, tmp_path / run), *outputs))
    caplog.set_level(logging.INFO)
    resumed = train(
        compose_config(
            *fixture_overrides(flat_root, tmp_path / "c"), *outputs, "ckpt_path=last", "trainer.max_epochs=2"
        )
    )
    assert resumed["epochs"] == 2
    assert f"Resuming {tmp_path / 'b' / 'checkpoints' / 'last.ckpt'} after epoch 1." in caplog.text


# --- A resume continues the run: its best epoch, its settings ---


def shuffled_labels_copy(root: Path, folder: Path) -> Path:
    """A copy of the fixture data whose training labels are shuffled: a model trained on it gets worse."""
    shutil.copytree(root, folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    _, original = synthetic_split(SIZES["train"], seed=0)
    write_idx(labels, np.random.default_rng(0).permutation(original))
    return folder


def test_a_resume_keeps_the_best_epoch_from_before_it(flat_root, tmp_path, caplog):
    constant = ["scheduler=none", "optimizer.lr=0.05"]
    first = train(compose_config(*fixture_overrides(flat_root, tmp_path / "first"), *constant))
    worse = shuffled_labels_copy(flat_root, tmp_path / "worse")  # the resumed epochs learn noise
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    caplog.set_level(logging.INFO)
    resume = [*fixture_overrides(worse, tmp_path / "resumed"), *constant, f"ckpt_path={last}", "trainer.max_epochs=5"]
    resumed = train(compose_config(*resume))
    assert f"Resuming {last} after epoch 3." in caplog.text
    assert resumed["val/acc"] < 0.5 < first["val/acc_best"], "the resumed epochs are worse"
    best = torch.load(tmp_path / "resumed" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] <= 2, "best.ckpt is an epoch from before the resume"
    score = next(state["best_model_score"] for key, state in best["callbacks"].items() if "val/acc" in key)
    assert float(score) == pytest.approx(resumed["val/acc_best"]) == pytest.approx(first["val/acc_best"])
    assert resumed["test/acc"] == pytest.approx(first["test/acc"]), "the test measures the best epoch's model"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"has trained all 3 epochs of trainer.max_epochs=3: start a new run to train longer"),
        (["trainer.max_epochs=5"], r"trainer.max_epochs cannot change \(3 in the checkpoint, 5 now: OneCycleLR spans"),
        (["optimizer.lr=0.02"], r"a resume continues its run, so optimizer.lr cannot change \(0.05 in the checkpoint"),
        (["optimizer=adam"], r"so optimizer._target_ cannot change \(torch.optim.SGD in the checkpoint"),
        (["data.val_size=100"], r"so data.val_size cannot change"),
        (["seed=7"], r"so data.seed cannot change"),
        (["callbacks=ema"], r"so callbacks.ema._target_ cannot change \(None in the checkpoint, lightning.*WeightAv"),
    ],
    ids=["finished", "longer-one-cycle", "lr", "optimizer", "val-size", "seed", "ema"],
)
def test_a_resume_that_would_not_continue_its_run_is_refused_in_one_line(overrides, message, run, flat_root, tmp_path):
    last = run[0] / "checkpoints" / "last.ckpt"
    cfg = compose_config(*fixture_overrides(flat_root, tmp_path), f"ckpt_path={last}", *overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_a_resume_may_change_how_it_runs(flat_root, tmp_path):
    first = [*fixture_overrides(flat_root, tmp_path / "first"), "scheduler=none", "trainer.max_epochs=1"]
    train(compose_config(*first))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    moved = shutil.copytree(flat_root, tmp_path / "moved")
    again = [*fixture_overrides(moved, tmp_path / "again"), "scheduler=none", f"ckpt_path={last}"]
    resumed = train(compose_config(*again, "trainer.max_epochs=2", "data.eval_batch_size=50", "threads=1"))
    assert resumed["epochs"] == 2


# --- Threads: chosen from the CPUs and their load when not fixed, recorded, reused by a resume ---


@pytest.fixture
def load_on_2_cpus(monkeypatch):
    """Sets the load lenet.training.cpus sees on a 2-CPU machine, with neither OMP_NUM_THREADS nor Slurm to fix the
    count;
    torch's thread count (the whole test process's) is restored after."""
    for name in ("OMP_NUM_THREADS", *cpus.SLURM):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()

    def load(busy: int):
        """`busy` of the 2 CPUs kept busy by other processes over the 6 s since the command started."""
        busy_cpus = (float(busy), 2, f"{busy:.1f} busy over the last 6.0 s")
        monkeypatch.setattr(cpus, "busy_cpus", lambda machine: busy_cpus)

    yield load
    torch.set_num_threads(before)


def test_the_start_line_env_json_and_checkpoints_say_the_automatic_thread_count(
    load_on_2_cpus, flat_root, tmp_path, caplog
):
    load_on_2_cpus(1)  # one of the 2 CPUs busy: 1 thread (2 would collapse, here as anywhere)
    torch.set_num_threads(2)  # torch's count before: the run's must be the one chosen
    caplog.set_level(logging.INFO)
    train(compose_config(*fixture_overrides(flat_root, tmp_path), "trainer.max_epochs=1"))
    how = "auto: 2 CPUs, 1.0 busy over the last 6.0 s"
    assert f"Training on cpu, 1 thread ({how}): mnist from " in caplog.text
    env = json.loads((tmp_path / "env.json").read_text())
    assert (env["threads"], env["threads_chosen"]) == (1, how)
    assert Checkpoint.open(tmp_path / "checkpoints" / "last.ckpt").threads == 1


def test_a_resume_reuses_its_thread_count_and_ends_as_an_uninterrupted_run_unless_threads_is_set(
    load_on_2_cpus, flat_root, tmp_path, caplog
):
    recipe = ["scheduler=none", "model.dropout=0.3"]  # a longer resume may follow a constant LR; dropout draws
    load_on_2_cpus(1)  # one CPU busy at the start: 1 thread
    train(compose_config(*fixture_overrides(flat_root, tmp_path / "first"), *recipe, "trainer.max_epochs=1"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    load_on_2_cpus(0)  # idle now: the automatic choice would be 2 threads
    caplog.set_level(logging.INFO)
    resume = [*recipe, f"ckpt_path={last}", "trainer.max_epochs=2"]
    resumed = train(compose_config(*fixture_overrides(flat_root, tmp_path / "resumed"), *resume))
    assert "Training on cpu, 1 thread (as before the resume): " in caplog.text
    whole = [*fixture_overrides(flat_root, tmp_path / "whole"), *recipe, "trainer.max_epochs=2", "threads=1"]
    assert final_numbers(resumed) == final_numbers(train(compose_config(*whole)))
    # threads=N wins on a resume too, and is what its checkpoints then record (a few batches: 2 threads are slow
    # when the test's neighbours keep a CPU busy)
    short = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    train(compose_config(*fixture_overrides(flat_root, tmp_path / "set"), *resume, *short, "threads=2"))
    assert "Training on cpu, 2 threads (threads=2): " in caplog.text
    assert Checkpoint.open(tmp_path / "set" / "checkpoints" / "last.ckpt").threads == 2


# --- Configured values take effect ---


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        (["optimizer.momentum=0.5"], "momentum", 0.5),
        (["optimizer=adam", "optimizer.betas=[0.8,0.99]"], "betas", (0.8, 0.99)),
    ],
    ids=["sgd-momentum", "adam-beta1"],
)
def test_the_one_cycle_schedule_trains_with_the_configured_momentum(overrides, key, value, flat_root, tmp_path):
    OptimizerSpy.seen.clear()
    spy = "+callbacks.spy._target_=conftest.OptimizerSpy"
    train(compose_config(*fixture_overrides(flat_root, tmp_path), *overrides, spy, "trainer.max_epochs=1"))
    assert len(OptimizerSpy.seen) == 32 and len({group["lr"] for group in OptimizerSpy.seen}) > 10, "the LR cycles"
    assert {tuple(group[key]) if key == "betas" else group[key] for group in OptimizerSpy.seen} == {value}


EMA = ["callbacks=ema", "callbacks.ema.multi_avg_fn.decay=0.9"]  # a short average: the fixture runs 96 steps


def loss_of(state: dict, hparams: dict, images: torch.Tensor, labels: torch.Tensor, datamodule) -> float:
    module = LeNetModule(**hparams)
    module.load_state_dict(state)
    with torch.no_grad():
        images, labels = datamodule.on_after_batch_transfer((images, labels), 0)
        return float(torch.nn.functional.cross_entropy(module.eval()(images), labels))


def test_callbacks_ema_validates_checkpoints_and_tests_the_average_and_resumes_it(run, flat_root, tmp_path):
    averaged = train(compose_config(*fixture_overrides(flat_root, tmp_path / "ema"), *EMA))
    plain = torch.load(run[0] / "checkpoints" / "last.ckpt", weights_only=True)
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", weights_only=True)
    trained, average = last["current_model_state"], last["state_dict"]
    assert all(torch.equal(trained[key], plain["state_dict"][key]) for key in trained), "training itself is untouched"
    assert not torch.equal(average["net.0.weight"], trained["net.0.weight"]), "the checkpoint holds the average"
    data = datamodule(flat_root)
    val_loss = loss_of(average, last["hyper_parameters"], *data.splits["val"], data)
    assert averaged["val/loss"] == pytest.approx(val_loss, rel=1e-5), "validation ran on the average"
    assert loss_of(trained, last["hyper_parameters"], *data.splits["val"], data) != pytest.approx(val_loss, rel=1e-3)
    best = torch.load(tmp_path / "ema" / "checkpoints" / "best.ckpt", weights_only=True)
    test_loss = loss_of(best["state_dict"], best["hyper_parameters"], *data.splits["test"], data)
    assert averaged["test/loss"] == pytest.approx(test_loss, rel=1e-5), "the test measured best.ckpt's average"
    # Interrupted and resumed, the run ends as the uninterrupted one: the average and its count carry over.
    handler = signal.getsignal(signal.SIGINT)
    stop = ["+callbacks.stop._target_=conftest.InterruptAt", "+callbacks.stop.epoch=1", "+callbacks.stop.batch=5"]
    with pytest.raises(TrainingInterrupted):
        train(compose_config(*fixture_overrides(flat_root, tmp_path / "cut"), *EMA, *stop))
    signal.signal(signal.SIGINT, handler)
    interrupted = EventAccumulator(str(tmp_path / "cut")).Reload()
    assert "_hparams_/session_end_info" not in interrupted.PluginTagToContent("hparams"), "status unknown, not done"
    assert not {tag for tag in interrupted.Tags()["scalars"] if tag.startswith("hp/")}, "no accuracies, not 0"
    cut = f"ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}"
    resumed = train(compose_config(*fixture_overrides(flat_root, tmp_path / "resumed"), *EMA, cut))
    assert final_numbers(resumed) == final_numbers(averaged)
    with pytest.raises(ConfigError, match=r"callbacks.ema._target_ cannot change .*averages the weights of the whole"):
        train(compose_config(*fixture_overrides(flat_root, tmp_path / "dropped"), cut))


def test_debug_profile_writes_the_profilers_report_into_the_run_dir(flat_root, tmp_path):
    train(compose_config(*fixture_overrides(flat_root, tmp_path), "debug=profile", "trainer.max_epochs=1"))
    fit, test = (tmp_path / "fit-profile.txt").read_text(), (tmp_path / "test-profile.txt").read_text()
    assert fit.startswith("FIT Profiler Report") and test.startswith("TEST Profiler Report")
    for action in ["run_training_batch", "training_step", "optimizer_step", "backward", "validation_step"]:
        assert f"{action} " in fit, action
    assert "test_step " in test


def test_gradient_clipping_and_accumulation_take_effect(flat_root, tmp_path):
    GradientSpy.seen.clear()
    settings = ["trainer.gradient_clip_val=0.05", "trainer.accumulate_grad_batches=2", "trainer.max_epochs=1"]
    spy = "+callbacks.spy._target_=conftest.GradientSpy"
    train(compose_config(*fixture_overrides(flat_root, tmp_path), *settings, spy))
    steps = [step for step, _ in GradientSpy.seen]
    assert len(steps) == 32 and steps[-1] == 16, "32 batches, an optimizer step every second one"
    stepped = [norm for i, (step, norm) in enumerate(GradientSpy.seen) if step > (steps[i - 1] if i else 0)]
    assert len(stepped) == 16 and max(stepped) <= 0.05 + 1e-6, "every step's gradient clipped to norm 0.05"
    assert max(norm for _, norm in GradientSpy.seen) > 0.05, "unclipped, they are larger"


@pytest.mark.slow  # 200 epochs: 9 s
def test_debug_overfit_memorizes_its_batches(flat_root, tmp_path):
    overrides = [o for o in fixture_overrides(flat_root, tmp_path) if not o.startswith("trainer.max_epochs")]
    metrics = train(compose_config(*overrides, "debug=overfit"))
    assert metrics["epochs"] == 200 and metrics["train/acc"] >= 0.99


@pytest.mark.parametrize(
    "precision", ["bf16-true", "bf16-mixed", pytest.param("16-true", marks=pytest.mark.slow), "64-true"]
)  # 16-true: float16 matmuls are slow on a CPU (11 s)
def test_every_precision_trains_on_the_cpu(precision, flat_root, tmp_path):
    cfg = compose_config(*fixture_overrides(flat_root, tmp_path), f"trainer.precision={precision}")
    metrics = train(cfg)
    assert metrics["train/loss"] < 2.0 and metrics["test/acc"] > 0.3, "it learned"


def test_batch_norm_trains_when_the_last_batch_would_hold_one_image(flat_root, tmp_path):
    # 1000 training images in batches of 27: 37 full ones and 1 left over, which batch norm cannot train on.
    cfg = compose_config(*fixture_overrides(flat_root, tmp_path), "data.batch_size=27", "model.batch_norm=true")
    assert train(cfg)["epochs"] == 3


def test_ranks_other_than_0_draw_their_own_dropout_masks():
    draws = []
    for rank in (0, 1, 2):
        torch.manual_seed(42)  # every DDP rank starts from the same seed
        module = LeNetModule(model={"_target_": "lenet.training.network.LeNet"}, optimizer={})
        module._trainer = SimpleNamespace(global_rank=rank)
        module.setup("fit")
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_validation_and_test_batches_evaluated_in_chunks_give_one_pass_logits():
    # On the CPU an evaluation batch runs EVAL_CHUNK images at a time (memory): its metrics must not depend on that.
    torch.manual_seed(0)
    module = LeNetModule(model={"batch_norm": True, "dropout": 0.5}).eval()
    images = torch.randn(2 * EVAL_CHUNK + 3, 1, 28, 28)
    with torch.inference_mode():
        chunked, whole = module._evaluate(images), module(images)
    assert torch.equal(chunked.argmax(1), whole.argmax(1))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_hooks_a_callback_defines_still_run_once_undefined_ones_are_skipped():
    # lenet.training.hook_calls skips the hooks no callback defines (speed): one defined by a class, or set on an
    # instance as LambdaCallback does, must still run at every step.
    import lightning as L
    from lightning.pytorch.callbacks import LambdaCallback
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lenet.training.hook_calls import skip_undefined_hooks

    class CountsBackward(L.Callback):
        calls = 0

        def on_before_backward(self, trainer, module, loss):
            CountsBackward.calls += 1

    after = []
    counted = [CountsBackward(), LambdaCallback(on_after_backward=lambda *_: after.append(1))]
    skip_undefined_hooks()
    trainer = L.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=counted)  # fmt: skip
    trainer.fit(BoringModel())
    assert (CountsBackward.calls, len(after)) == (3, 3)


# --- What it reports ---


def test_metrics_json_records_the_data_and_the_confusion_matrix(run, flat_root):
    _, metrics = run
    assert metrics["data"] | {"root": "x"} == {
        "dataset": "mnist", "root": "x", "train_images": 1000, "val_images": 200, "test_images": 400,
        "test_labels_sha256": metrics["data"]["test_labels_sha256"],
    }  # fmt: skip
    assert metrics["data"]["root"] == str(flat_root.resolve())
    confusion = np.array(metrics["test/confusion_matrix"])
    assert confusion.sum() == 400 and np.trace(confusion) / 400 == pytest.approx(metrics["test/acc"])


def test_eval_on_other_data_says_so_and_records_which(run, tmp_path, caplog):
    other = write_dataset(tmp_path / "other", gz=True)
    write_idx(other / "t10k-labels-idx1-ubyte.gz", np.random.default_rng(5).integers(0, 10, SIZES["test"]))
    caplog.set_level(logging.INFO)
    ckpt = run[0] / "checkpoints" / "best.ckpt"
    cfg = compose_config(f"ckpt_path={ckpt}", f"data.root={other}", f"run_dir={tmp_path / 'eval'}", config_name="eval")
    metrics = evaluate(cfg)
    assert f"The test images in {other} are not those {ckpt} was made with (mnist from" in caplog.text
    assert metrics["data"]["root"] == str(other) and metrics["data"]["test_images"] == SIZES["test"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["data"] == metrics["data"]
