"""What a checkpoint says is data: lenet builds its own LeNet from plain, checked settings, whatever the file names,
in every command that reads one; an odd or damaged checkpoint, or a resume that changes its run, is one line."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lenet.inference.http_api
from conftest import compose_config, fixture_overrides, glyph_split, lenet_command
from lenet.frame.errors import ConfigError, ModelError
from lenet.inference.classify import predict
from lenet.inference.model_files import load
from lenet.inference.portable import export
from lenet.training.checkpoints import Checkpoint
from lenet.training.fit import evaluate, train


class Payload:
    """Unpickled (numpy.load with allow_pickle), it creates a file: the stand-in for any code an attacker runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def path_of(place: Path) -> dict:
    return {"_target_": "pathlib.Path", "_args_": [str(place)]}


# Model settings that name code for Hydra's instantiate, as lenet once passed a checkpoint's settings to it. Each
# harms a folder (see `harmed`): `ran` appears, or `victim` goes.
def hub(folder: Path) -> dict:
    """torch.hub.load imports the hubconf.py that a nested _target_ writes first."""
    code = f"open({str(folder / 'ran')!r}, 'w').close()\n\ndef lenet(**kwargs):\n    return None\n"
    hubconf = {"_target_": "pathlib.Path.write_text", "_args_": [path_of(folder / "hubconf.py"), code]}
    return {"_target_": "torch.hub.load", "repo_or_dir": str(folder), "model": "lenet", "source": "local",
            "verbose": hubconf}  # fmt: skip


def numpy_pickle(folder: Path) -> dict:
    np.save(folder / "weights.npy", np.array([Payload(folder / "ran")], dtype=object), allow_pickle=True)
    return {"_target_": "numpy.load", "file": str(folder / "weights.npy"), "allow_pickle": True}


def open_for_writing(folder: Path) -> dict:
    return {"_target_": "builtins.open", "_args_": [str(folder / "ran"), "w"]}


def unlink(folder: Path) -> dict:
    return {"_target_": "pathlib.Path.unlink", "_args_": [path_of(folder / "victim")]}


def rename(folder: Path) -> dict:
    return {"_target_": "pathlib.Path.rename", "_args_": [path_of(folder / "victim"), str(folder / "ran")]}


def copytree(folder: Path) -> dict:
    return {"_target_": "shutil.copytree", "src": str(folder / "tree"), "dst": str(folder / "ran")}


def symlink(folder: Path) -> dict:
    return {"_target_": "os.symlink", "src": str(folder / "victim"), "dst": str(folder / "ran")}


def in_a_setting(folder: Path) -> dict:
    """lenet's own target, with the code one level down, where instantiate also goes."""
    return {"_target_": "lenet.training.network.LeNet", "activation": open_for_writing(folder)}


def in_an_unknown_key(folder: Path) -> dict:
    return {"_target_": "lenet.training.network.LeNet", "num_classes": 10, "init": open_for_writing(folder)}


PAYLOADS = [hub, numpy_pickle, open_for_writing, unlink, rename, copytree, symlink, in_a_setting, in_an_unknown_key]
REFUSED_KEY = {in_a_setting: "model.activation", in_an_unknown_key: "model.init"}  # the others: model._target_


def target_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "target"
    (folder / "tree").mkdir(parents=True)
    (folder / "victim").write_text("keep me")
    return folder


def harmed(folder: Path) -> bool:
    ran = folder / "ran"
    return ran.exists() or ran.is_symlink() or not (folder / "victim").is_file()


def rewritten(checkpoint: Path, out: Path, change) -> Path:
    """A copy of a real checkpoint of lenet.train, plain values only (it passes weights_only), `change`d."""
    contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(contents)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(contents, out)
    return out


def with_model(model: dict):
    def change(contents):
        contents["hyper_parameters"]["model"] = model

    return change


def glyph_root(glyph_checkpoint: Path) -> Path:
    return glyph_checkpoint.parents[2] / "data"


def run_eval(ckpt, tmp_path, glyph_checkpoint):
    evaluate(compose_config(f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'eval'}", config_name="eval"))


def run_predict(ckpt, tmp_path, glyph_checkpoint):
    image = tmp_path / "digit.png"
    Image.fromarray(glyph_split(1, seed=0)[0][0]).save(image)
    predict(compose_config(f"ckpt_path={ckpt}", f"inputs={image}", f"run_dir={tmp_path}", config_name="predict"))


def run_export(ckpt, tmp_path, glyph_checkpoint):
    export(compose_config(f"ckpt_path={ckpt}", f"run_dir={tmp_path}", "format=pt2", config_name="export"))


def run_serve(ckpt, tmp_path, glyph_checkpoint):
    serve_cfg = compose_config(f"ckpt_path={ckpt}", "port=0", f"run_dir={tmp_path}", config_name="serve")
    lenet.inference.http_api.serve(serve_cfg)  # `listen` is patched to refuse: a model that loads is never served here


def run_resume(ckpt, tmp_path, glyph_checkpoint):
    overrides = fixture_overrides(glyph_root(glyph_checkpoint), tmp_path / "resumed")
    train(compose_config(*overrides, f"ckpt_path={ckpt}", "trainer.max_epochs=4", "optimizer.lr=0.05", "logger=none"))


def run_in_its_run_dir(ckpt, tmp_path, glyph_checkpoint):
    """A run starting in a run dir that holds an earlier attempt's last.ckpt resumes it (lenet.runs.rundir)."""
    overrides = fixture_overrides(glyph_root(glyph_checkpoint), ckpt.parents[1])
    train(compose_config(*overrides, "trainer.max_epochs=4", "optimizer.lr=0.05", "logger=none"))


# Each command that reads a checkpoint, and where it takes it from: the file, or a run dir holding it.
COMMANDS = {
    "eval": (run_eval, "hostile.ckpt", "{ckpt}"),
    "eval-run-dir": (run_eval, "run/checkpoints/best.ckpt", "{run}"),
    "predict": (run_predict, "hostile.ckpt", "{ckpt}"),
    "export": (run_export, "hostile.ckpt", "{ckpt}"),
    "serve": (run_serve, "run/checkpoints/best.ckpt", "{run}"),
    "resume": (run_resume, "run/checkpoints/last.ckpt", "{ckpt}"),
    "resume-run-dir": (run_in_its_run_dir, "run/checkpoints/last.ckpt", None),
}


def refuse_to_listen(*args):
    raise AssertionError("the model loaded: lenet.serve would serve it")


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda payload: payload.__name__)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_that_names_code_is_refused_in_one_line_before_anything_is_built(
    command, payload, glyph_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr(lenet.inference.http_api, "listen", refuse_to_listen)
    folder = target_folder(tmp_path)
    run, placed, given = COMMANDS[command]
    ckpt = rewritten(glyph_checkpoint, tmp_path / placed, with_model(payload(folder)))
    ckpt_path = given.format(ckpt=ckpt, run=ckpt.parents[1]) if given else None
    with pytest.raises(ModelError) as refused:
        run(ckpt_path or ckpt, tmp_path, glyph_checkpoint)
    assert not harmed(folder)
    message = str(refused.value)
    assert message.startswith(f"{ckpt} holds {REFUSED_KEY.get(payload, 'model._target_')}") and "\n" not in message


def test_the_refusal_of_code_is_one_line_and_exit_1(glyph_checkpoint, tmp_path):
    folder = target_folder(tmp_path)
    ckpt = rewritten(glyph_checkpoint, tmp_path / "hostile.ckpt", with_model(hub(folder)))
    done = subprocess.run(
        lenet_command("eval", f"ckpt_path={ckpt}", f"outputs_dir={tmp_path / 'outputs'}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {ckpt} holds model._target_='torch.hub.load', which is not allowed: it must be "
        "lenet.training.network.LeNet, "
        "lenet's own network"
    ]
    assert not harmed(folder)


@pytest.fixture(scope="module")
def one_epoch(flat_root, tmp_path_factory) -> Path:
    """A run dir of one epoch with a constant learning rate (so a resume may train longer), not yet tested."""
    run_dir = tmp_path_factory.mktemp("one-epoch")
    train(compose_config(*fixture_overrides(flat_root, run_dir), *CONSTANT, "trainer.max_epochs=1"))
    (run_dir / "metrics.json").unlink()  # as if it stopped before its test: resumable
    return run_dir


CONSTANT = ["scheduler=none", "logger=none"]


def test_a_checkpoints_optimizer_and_scheduler_are_never_instantiated(one_epoch, flat_root, tmp_path):
    """A resume builds its module from the run's own config and Lightning restores only state; eval, predict and
    the rest build no optimizer."""
    folder = target_folder(tmp_path)

    def change(contents):
        contents["hyper_parameters"]["optimizer"] = open_for_writing(folder)
        contents["hyper_parameters"]["scheduler"] = {**rename(folder), "_partial_": True}

    last = rewritten(one_epoch / "checkpoints" / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt", change)
    assert evaluate(compose_config(f"ckpt_path={last}", f"run_dir={tmp_path / 'eval'}", config_name="eval"))
    resumed = train(compose_config(*fixture_overrides(flat_root, tmp_path / "resumed"), *CONSTANT, f"ckpt_path={last}",
                                   "trainer.max_epochs=2"))  # fmt: skip
    assert resumed["epochs"] == 2
    assert not harmed(folder)


def test_an_earlier_lenet_checkpoint_still_loads(glyph_checkpoint, tmp_path):
    """Written before lenet recorded its config, data, threads and metrics, and before model.compile existed."""

    def older(contents):
        for record in ("config", "data", "threads", "metrics", "torch_rng_state"):
            del contents[record]
        for setting in ("compile", "channels_last"):
            del contents["hyper_parameters"]["model"][setting]

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    old = load(rewritten(glyph_checkpoint, tmp_path / "old.ckpt", older), device="cpu")
    assert (old.logits(images) == load(glyph_checkpoint, device="cpu").logits(images)).all()


def model_setting(key: str, value):
    def change(contents):
        contents["hyper_parameters"]["model"][key] = value

    return change


def data_setting(key: str, value):
    def change(contents):
        contents["datamodule_hyper_parameters"][key] = value

    return change


def record(name: str, value):
    def change(contents):
        contents[name] = value

    return change


def weight(key: str, value):
    def change(contents):
        contents["state_dict"][key] = value

    return change


def both(*changes):
    def change(contents):
        for each in changes:
            each(contents)

    return change


NAN = torch.full((6, 1, 5, 5), float("nan"))
INF = torch.zeros(10).index_fill_(0, torch.tensor([3]), float("-inf"))


# fmt: off
@pytest.mark.parametrize(
    "change, line",
    [
        (weight("net.0.weight", torch.zeros(6, 1, 3, 3)),
         "holds weights that do not fit its model settings: net.0.weight is 6x1x3x3 in it, 6x1x5x5 in LeNet()"),
        (model_setting("num_classes", 12),
         "holds data.num_classes=10 but model.num_classes=12: they must agree"),
        (both(model_setting("num_classes", 12), data_setting("num_classes", 12)),
         "holds weights that do not fit its model settings: net.11.weight is 10x84 in it, 12x84 in "
         "LeNet(num_classes=12)"),
        (model_setting("batch_norm", True),
         "lacks the weight net.1.weight of LeNet(batch_norm=True): it is not a checkpoint of lenet.train"),
        (weight("net.0.weight", torch.zeros(6, 1, 5, 5, dtype=torch.long)),
         "holds weights that do not fit its model settings: net.0.weight is 6x1x5x5 int64 in it, 6x1x5x5 float32 in "
         "LeNet()"),
        (data_setting("std", 0),
         "holds data.std=0, which is not allowed: it must be a number > 0"),
        (data_setting("mean", "abc"),
         "holds data.mean='abc', which is not allowed: it must be a number in [0, 1)"),
        (data_setting("dataset", "emnist"),
         "holds data.dataset='emnist', which is not allowed: it must be one of mnist, fashion_mnist, kmnist, images"),
        (data_setting("transform", "x"),
         "holds data.transform, which is not a setting of lenet.training.datamodule.MNISTDataModule"),
        (model_setting("dropout", float("nan")),
         "holds model.dropout=nan, which is not allowed: it must be a number in [0, 1)"),
        (weight("net.0.weight", NAN),
         "holds weights that are NaN or infinite (net.0.weight): the run that saved it diverged; use a checkpoint "
         "from before"),
        (weight("net.11.bias", INF),
         "holds weights that are NaN or infinite (net.11.bias): the run that saved it diverged; use a checkpoint "
         "from before"),
        (record("data", "\x1b]0;owned\x07"),
         "holds data='\\x1b]0;owned\\x07', which is not allowed: it must be a record of the data it was trained on "
         "(dataset, root, test_labels_sha256)"),
    ],
    ids=["shape", "classes-disagree", "classes-vs-weights", "batch-norm-without-its-weights", "integer-weights",
         "std-0", "mean-abc", "unknown-dataset", "unknown-data-key", "nan-dropout", "nan-weights", "inf-weights",
         "data-record"],
)
# fmt: on
def test_an_odd_checkpoint_is_one_line_naming_what_is_wrong(change, line, glyph_checkpoint, tmp_path):
    odd = rewritten(glyph_checkpoint, tmp_path / "odd.ckpt", change)
    with pytest.raises(ModelError) as refused:
        load(odd, device="cpu")
    assert str(refused.value) == f"{odd} {line}"


@pytest.fixture
def interrupted(one_epoch, tmp_path) -> Path:
    """A copy of the one-epoch run dir, as a run interrupted after its first epoch leaves it."""
    return shutil.copytree(one_epoch, tmp_path / "run")


@pytest.mark.parametrize("damage", ["empty", "cut-short"])
def test_a_damaged_last_ckpt_says_so_and_to_resume_from_best_ckpt_which_it_keeps(damage, interrupted, flat_root):
    """As a full disk during the save, or a kill, leaves it; the run dir's own resume meets it first."""
    last, best = interrupted / "checkpoints" / "last.ckpt", interrupted / "checkpoints" / "best.ckpt"
    kept = best.read_bytes()
    last.write_bytes(last.read_bytes()[: 0 if damage == "empty" else 327_680 // 3])
    how = "it is empty" if damage == "empty" else "it ends after 109,226 bytes, without its archive's end"
    again = [*fixture_overrides(flat_root, interrupted), *CONSTANT, "trainer.max_epochs=2"]
    with pytest.raises(ModelError) as refused:
        train(compose_config(*again))
    assert str(refused.value) == (
        f"{last} is damaged ({how}; a full disk or a kill while it was saved does that): resume from the run's best "
        f"epoch (ckpt_path={best}; it is whole and kept) or start the run over"
    )
    assert best.read_bytes() == kept
    if damage == "cut-short":  # what it advises works
        assert train(compose_config(*again, f"ckpt_path={best}"))["epochs"] == 2


def test_a_damaged_checkpoint_is_not_called_foreign(one_epoch, tmp_path):
    best = Path(shutil.copy(one_epoch / "checkpoints" / "best.ckpt", tmp_path / "best.ckpt"))
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"damaged \(it ends after 1,000 bytes, .*: use another checkpoint, or train"):
        Checkpoint.open(best)


def test_a_resume_that_changes_several_settings_names_them_all_in_one_line(glyph_checkpoint, tmp_path):
    """Each with its values and why; nothing in the line says the opposite (trainer settings may change, but not
    the run's length under a schedule that spans it)."""
    changed = [*fixture_overrides(glyph_root(glyph_checkpoint), tmp_path), "logger=none", "data.batch_size=64"]
    with pytest.raises(ConfigError) as refused:
        train(compose_config(*changed, "trainer.max_epochs=6", f"ckpt_path={glyph_checkpoint}"))
    assert str(refused.value) == (
        f"ckpt_path={glyph_checkpoint}: a resume continues its run, so data.batch_size cannot change (32 in the "
        "checkpoint, 64 now); trainer.max_epochs cannot change (4 in the checkpoint, 6 now: OneCycleLR spans the "
        "run). Resume with the checkpoint's values, or start a new run to change them "
        f"(init_from={glyph_checkpoint} starts one from its weights)"
    )
