import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import compose_config, fixture_overrides
from lenet import CONFIG_DIR
from lenet.frame import keys
from lenet.frame.errors import ConfigError
from lenet.frame.validate import validate
from lenet.runs.replay import SEARCH, left_out
from lenet.training.fit import train
from lenet.training.hparams import logged_hparams, shown_hparams

GROUPS = ["model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_every_group_has_options():
    assert all(options(group) for group in GROUPS)
    assert options("data") == ["fashion_mnist", "images", "kmnist", "mnist"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "onecycle", "step"]


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g in GROUPS for o in options(g) if g != "trainer"] + ["trainer=cpu"]
)
def test_every_option_composes_and_trains(override, flat_root, tmp_path, request):
    quick = [] if override.startswith("debug=") else ["debug=fast_dev_run"]
    own = [f"data.root={request.getfixturevalue('glyph_folder')}"] if override == "data=images" else []
    cfg = compose_config(*fixture_overrides(flat_root, tmp_path), override, *own, *quick)
    metrics = train(cfg)
    assert metrics["epochs"] >= 1 and 0 <= metrics["test/acc"] <= 1
    missing = [name for name, value in logged_hparams(cfg).items() if value is None]
    assert not missing, f"{override} leaves these HPARAMS columns empty, so its runs do not line up with others'"


def test_trainer_options_compose_with_their_accelerator():
    accelerators = {o: compose_config(f"trainer={o}", "run_dir=x").trainer.accelerator for o in options("trainer")}
    assert accelerators == {"cpu": "cpu", "ddp": "auto", "default": "auto", "gpu": "gpu"}


def test_experiment_seed_is_the_seed_scripts_recipe():
    cfg = compose_config("experiment=original", "run_dir=x")
    assert OmegaConf.to_container(cfg.optimizer) == {
        "_target_": "torch.optim.SGD",
        "_partial_": True,
        "lr": 0.001,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
        "fused": True,  # how the step is computed (one kernel), not what it computes
    }
    assert not cfg.scheduler
    assert (cfg.data.batch_size, cfg.data.mean, cfg.data.std, cfg.trainer.max_epochs) == (64, 0.5, 0.5, 10)
    assert cfg.data.val_size == 0 and cfg.trainer.limit_val_batches == 0  # trains on all 60,000 images
    assert cfg.callbacks.checkpoint is None and cfg.callbacks.last_checkpoint  # so the final model is tested
    assert OmegaConf.to_container(cfg.model) == OmegaConf.to_container(compose_config("run_dir=x").model)
    assert (cfg.model.activation, cfg.model.pooling, cfg.model.batch_norm, cfg.model.dropout) == (
        "relu",
        "max",
        False,
        0,
    )


def test_keys_users_type_exist():
    cfg = compose_config("run_dir=x")
    for key in ["optimizer.lr", "data.batch_size", "data.root", "trainer.max_epochs", "trainer.accelerator", "seed"]:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    assert cfg.ckpt_path is None


def test_data_root_defaults_to_data_and_follows_LENET_DATA(monkeypatch):
    assert compose_config("run_dir=x").data.root == "data"
    monkeypatch.setenv("LENET_DATA", "/srv/mnist")
    assert compose_config("run_dir=x").data.root == "/srv/mnist"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not allowed: it must be a number > 0"),
        ("optimizer.lr=abc", "optimizer.lr='abc' is not allowed: it must be a number > 0"),
        ("data.batch_size=0", "data.batch_size=0 is not allowed: it must be an integer >= 1"),
        ("data.batch_size=abc", "data.batch_size='abc' is not allowed: it must be an integer >= 1"),
        ("data.val_size=-1", "data.val_size=-1 is not allowed: it must be a share of the training images in [0, 1)"),
        ("data.val_size=1.5", "data.val_size=1.5 is not allowed: it must be a share of the training images in [0, 1)"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: it must be an integer >= 1"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 is not allowed: it must be an integer >= 1"),
        ("seed=x", "seed='x' is not allowed: it must be an integer"),
        ("trainer.precision=16", "trainer.precision=16 is not allowed: it must be one of 32-true, bf16-mixed,"),
        (
            "trainer.accumulate_grad_batches=0",
            "trainer.accumulate_grad_batches=0 is not allowed: it must be an integer",
        ),
        ("model.activation=gelu", "model.activation='gelu' is not allowed: it must be one of relu, tanh"),
        ("model.dropout=1.5", "model.dropout=1.5 is not allowed: it must be a number in [0, 1)"),
        ("model.num_classes=1", "model.num_classes=1 is not allowed: it must be null, or an integer >= 2"),
        ("scheduler.pct_start=0", "scheduler.pct_start=0 is not allowed: it must be a number in (0, 1)"),
        ("threads=0", "threads=0 is not allowed: it must be null, or an integer >= 1"),
        ("trainer.precision=16-mixed", "trainer.precision=16-mixed needs a GPU; on the CPU use bf16-mixed"),
        ("optimizer.momentum=0", "optimizer.nesterov=true needs optimizer.momentum > 0 and no dampening"),
        ("+optimizer.lrr=1", "optimizer.lrr is not a setting of torch.optim.SGD; its settings: dampening,"),
        ("++data.bach_size=1", "data.bach_size is not a setting of lenet.training.datamodule.MNISTDataModule"),
        (
            "+callbacks.checkpoint.monitr=x",
            "callbacks.checkpoint.monitr is not a setting of lenet.training.checkpoints",
        ),
        ("data.augment=maybe", "data.augment='maybe' is not allowed: it must be true or false"),
        ("data.augment_shift=1.5", "data.augment_shift=1.5 is not allowed: it must be a number in [0, 1)"),
        ("trainer.profiler=fancy", "trainer.profiler='fancy' is not allowed: it must be null, or one of simple,"),
    ],
)
def test_bad_values_and_unknown_keys_are_named_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override, "run_dir=x"))
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("betas", ["[0.9,1.0]", "[-0.1,0.999]", "[0.9]", "0.9"])
def test_adam_betas_outside_0_1_are_refused(betas):
    with pytest.raises(ConfigError, match=r"optimizer.betas=.* is not allowed: it must be two numbers in \[0, 1\)"):
        validate(compose_config("optimizer=adamw", f"optimizer.betas={betas}", "run_dir=x"))


def test_a_new_option_file_gets_its_groups_checks(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "optimizer" / "rmsprop.yaml").write_text("_target_: torch.optim.RMSprop\n_partial_: true\nlr: 0.01\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        validate(compose(config_name="config", overrides=["optimizer=rmsprop", "run_dir=x"]))
        for override, message in [("optimizer.lr=-1", "optimizer.lr=-1 is not allowed"),
                                  ("+optimizer.momentum=1.5", "optimizer.momentum=1.5 is not allowed")]:  # fmt: skip
            with pytest.raises(ConfigError, match=message):
                validate(compose(config_name="config", overrides=["optimizer=rmsprop", override, "run_dir=x"]))


def test_the_option_lists_hold_only_the_option_files():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("optimizer=sdg", "run_dir=x")
    listed = str(error.value).split("Available options in 'optimizer':")[1].split("Config search path")[0]
    assert listed.split() == ["adam", "adamw", "sgd"]


def test_trainer_settings_users_reach_for_need_no_plus():
    cfg = compose_config("trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.5", "run_dir=x")
    validate(cfg)
    assert (cfg.trainer.accumulate_grad_batches, cfg.trainer.gradient_clip_val) == (2, 0.5)
    validate(compose_config("+trainer.benchmark=true", "run_dir=x"))  # any other Trainer argument, with +


def test_the_ema_decay_is_checked_inside_its_callback():
    with pytest.raises(ConfigError, match=r"callbacks.ema.multi_avg_fn.decay=1.5 is not allowed: it must be a number"):
        validate(compose_config("callbacks=ema", "callbacks.ema.multi_avg_fn.decay=1.5", "run_dir=x"))


def test_hparams_add_the_command_lines_keys_and_show_the_swept_ones_first():
    overrides = ["data=fashion_mnist", "data.augment=true", "optimizer.lr=0.05", "+trainer.benchmark=true",
                 "threads=1", "~callbacks.lr_monitor", "seed=2"]  # fmt: skip
    cfg = compose_config(*overrides, "run_dir=x")
    hparams = logged_hparams(cfg, overrides)
    assert hparams == logged_hparams(cfg) | {"data.augment": True, "trainer.benchmark": True}, "known keys keep names"
    assert (hparams["dataset"], hparams["lr"], hparams["seed"]) == ("fashion_mnist", 0.05, 2)
    assert shown_hparams(overrides, swept=set()) == {"dataset", "data.augment", "lr", "trainer.benchmark", "seed"}
    assert shown_hparams(overrides, swept={"data.augment", "seed"}) == {"data.augment", "seed"}
    assert logged_hparams(cfg, ["experiment=fast"])["experiment"] == "fast", "a group's option by its name"


def test_a_missing_required_value_is_named():
    with pytest.raises(ConfigError, match="ckpt_path is required: set it on the command line"):
        validate(compose_config("run_dir=x", config_name="eval"))


def test_a_rerun_leaves_out_what_keys_declares_not_rerun():
    assert "from the start" in left_out("ckpt_path") and "run's folder" in left_out("run_dir")
    assert left_out("hparams_search") == SEARCH
    assert left_out("optimizer.lr") == "" and left_out("trainer.max_epochs") == ""
    assert {key for key, declared in keys.KEYS.items() if declared.not_rerun} == {"ckpt_path", "run_dir"}
