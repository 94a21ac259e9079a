"""data=images: a folder (or a CSV) of the user's own labelled images is a data set. How it is listed, each refusal
in one line, the prepared images' cache, the split by seed, the pool; and end to end, a model trained on drawn shapes
that eval, predict and export use with the folders' class names."""

import csv
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image, ImageDraw

from conftest import compose_config, lenet_command
from lenet.cli import check
from lenet.frame.errors import ConfigError, DataError
from lenet.frame.mnist_family import LAYOUTS
from lenet.images import pool
from lenet.inference.classify import predict
from lenet.inference.portable import export
from lenet.training.checkpoints import Checkpoint
from lenet.training.fit import evaluate, train
from lenet.training.image_folder import listing
from lenet.training.prepared_images import CACHE_FOLDER, assigned_splits, prepared

SHAPES = ("bar", "circle", "cross")
FORMATS = ("jpg", "png", "bmp", "gif", "webp", "tif")  # what lenet.predict reads
QUICK = ["trainer.max_epochs=2", "data.batch_size=16", "logger=none", "callbacks.progress_bar.refresh_rate=0"]


def drawn(shape: str, rng: np.random.Generator) -> Image.Image:
    """A shape in dark ink on light paper, as a user would scan or photograph it: any size, any margins."""
    side = int(rng.integers(28, 65))
    image = Image.new("L", (side, side), int(rng.integers(190, 256)))
    draw, ink, width = ImageDraw.Draw(image), int(rng.integers(0, 70)), max(2, side // 12)
    left, top, right, bottom = side * rng.uniform(0.1, 0.25, 4) * [1, 1, -1, -1] + [0, 0, side, side]
    if shape == "bar":
        draw.rectangle((left, side / 2 - width, right, side / 2 + width), fill=ink)
    elif shape == "circle":
        draw.ellipse((left, top, right, bottom), outline=ink, width=width)
    elif shape == "cross":
        draw.line((left, top, right, bottom), fill=ink, width=width)
        draw.line((left, bottom, right, top), fill=ink, width=width)
    else:  # a star: what the model never saw
        draw.regular_polygon((side / 2, side / 2, (right - left) / 2), 5, fill=ink)
    return image


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
    return path


def shapes_folder(root: Path, per_class: int, seed: int = 0, shapes=SHAPES) -> Path:
    """`per_class` drawings of each shape in root/<shape>/, in each format in turn."""
    rng = np.random.default_rng(seed)
    for shape in shapes:
        for i in range(per_class):
            save(drawn(shape, rng), root / shape / f"{i:03d}.{FORMATS[i % len(FORMATS)]}")
    return root


def a_drawing(path: Path, seed: int = 0) -> Path:
    return save(drawn(SHAPES[seed % 3], np.random.default_rng(seed)), path)


def data_module(root: Path, *overrides: str):
    """The data module `lenet.train data=images data.root=ROOT` builds, loaded as the run loads it."""
    cfg = compose_config("data=images", f"data.root={root}", *overrides, "run_dir=x")
    data = instantiate(cfg.data, num_classes=cfg.model.num_classes)
    data.load()
    return data


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The refusal of a finished command: exit status 1, one line on stderr, no traceback."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# Listing: which files, which classes, which splits.


@pytest.mark.parametrize(
    ("folders", "classes"),
    [(["dog", "cat", "emu"], ["cat", "dog", "emu"]), (["10", "2", "1"], ["1", "2", "10"])],
)
def test_class_names_are_the_folders_sorted_numbers_by_value(tmp_path, folders, classes):
    for seed, name in enumerate(folders):
        a_drawing(tmp_path / name / "a.png", seed)
        a_drawing(tmp_path / name / "deeper" / "b.jpg", seed + 3)  # at any depth in its class folder
        (tmp_path / name / "notes.txt").write_text("taken on Tuesday")
        (tmp_path / name / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        a_drawing(tmp_path / name / ".thumbnails" / "a.png", seed)  # hidden: never looked at
    found = listing(tmp_path)
    assert found.classes == classes
    assert [path.relative_to(tmp_path).as_posix() for path in found.files] == [
        f"{name}/{file}" for name in classes for file in ("a.png", "deeper/b.jpg")
    ]
    assert found.labels == [0, 0, 1, 1, 2, 2] and found.splits == [None] * 6


def test_a_link_loop_in_a_class_folder_lists_each_image_once(tmp_path):
    """cat/up -> .. (a link made by mistake): not followed back into the data set, where it would list every image
    40 times over (until the system refuses the path), the dog's under cat/ too."""
    class_folders(tmp_path, "cat", "dog")
    (tmp_path / "cat" / "up").symlink_to("..", target_is_directory=True)
    found = listing(tmp_path)
    assert sorted({path.resolve() for path in found.files}) == sorted(found.files) == [
        tmp_path / "cat" / "a.png", tmp_path / "dog" / "a.png",
    ]  # fmt: skip


def test_split_folders_are_kept_as_given(tmp_path):
    given = [("train", "x"), ("train", "y"), ("val", "x"), ("val", "y"), ("test", "y")]
    for seed, (split, name) in enumerate(given):
        a_drawing(tmp_path / split / name / f"{split}.png", seed)
    found = listing(tmp_path)
    assert found.classes == ["x", "y"]
    given = zip(found.files, found.splits, strict=True)
    assert [(path.relative_to(tmp_path).as_posix(), split) for path, split in given] == [
        ("train/x/train.png", "train"), ("train/y/train.png", "train"), ("val/x/val.png", "val"),
        ("val/y/val.png", "val"), ("test/y/test.png", "test"),
    ]  # fmt: skip
    chosen = assigned_splits(found, [bytes([i]) * 16 for i in range(5)], val_size=0.5, test_size=0.5, seed=0)
    assert {split: kept.tolist() for split, kept in chosen.items()} == {"train": [0, 1], "val": [2, 3], "test": [4]}


@pytest.mark.parametrize(
    "table",
    [
        "path,label\n../images/c.png,cat\n../images/d.png,dog\n",
        "\ufeff../images/c.png,cat\n\n../images/d.png,dog\n",  # no header, a spreadsheet's byte order mark
        "Path, Label, Split\n../images/c.png, cat, train\n../images/d.png, dog, test\n",
    ],
    ids=["header", "no header", "split column"],
)
def test_a_csv_lists_paths_relative_to_its_folder(tmp_path, table):
    for seed, name in enumerate("cd"):
        a_drawing(tmp_path / "images" / f"{name}.png", seed)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "labels.csv").write_text(table, encoding="utf-8")
    found = listing(tmp_path / "lists" / "labels.csv")
    assert found.classes == ["cat", "dog"] and found.labels == [0, 1]
    assert found.files == [tmp_path / "images" / "c.png", tmp_path / "images" / "d.png"]
    assert found.splits == (["train", "test"] if "split" in table.lower() else [None, None])


def test_a_csv_is_a_data_set_prepared_once_beside_it(tmp_path):
    images = shapes_folder(tmp_path / "images", 4)
    rows = [f"../images/{path.parent.name}/{path.name},{path.parent.name}" for path in sorted(images.rglob("*.*"))]
    table = tmp_path / "lists" / "labels.csv"
    table.parent.mkdir()
    table.write_text("\n".join(["path,label", *rows]) + "\n")
    data = data_module(table)
    assert data.hparams.classes == list(SHAPES) and data.hparams.num_classes == 3
    assert sum(len(labels) for _, labels in data.loaded.values()) == 12
    assert len(list((table.parent / CACHE_FOLDER).glob("object-*.npz"))) == 1
    assert not (images / CACHE_FOLDER).exists()


# Refusals: one line each, before anything is written.


def class_folders(root: Path, *names: str) -> Path:
    for seed, name in enumerate(names):
        a_drawing(root / name / "a.png", seed)
    return root


def with_loose_image(root: Path) -> Path:
    class_folders(root, "cat", "dog")
    a_drawing(root / "stray.png")
    return root


def with_empty_class(root: Path) -> Path:
    class_folders(root, "cat", "dog")
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("to do")
    return root


def mixed_splits(root: Path) -> Path:
    class_folders(root / "train", "cat", "dog")
    class_folders(root, "emu")
    return root


def untrained_class(root: Path) -> Path:
    class_folders(root / "train", "cat", "dog")
    class_folders(root / "test", "cat", "emu")
    return root


def csv_file(root: Path, table: str) -> Path:
    class_folders(root, "cat", "dog")
    (root / "labels.csv").write_text(table)
    return root / "labels.csv"


REFUSED = {
    "empty class folder": (with_empty_class, ["emu holds no images", "add its images or remove the folder"]),
    "one class": (lambda root: class_folders(root, "cat"), ["holds one class (cat)", "needs two or more"]),
    "loose images": (with_loose_image, ["holds images outside class folders (stray.png)"]),
    "mixed folders": (mixed_splits, ["mixes split folders (train) with other folders (emu)"]),
    "class not in train/": (untrained_class, ["class emu is in", "but not in train/"]),
    "csv, missing file": (
        lambda root: csv_file(root, "cat/a.png,cat\ndog/gone.png,dog\n"),
        ["names 1 file(s) that do not exist", "dog/gone.png"],
    ),
    "csv, bad row": (
        lambda root: csv_file(root, "path,label\ncat/a.png,cat\ndog/a.png\n"),
        ["labels.csv, line 3: 'dog/a.png' is not path,label or path,label,split"],
    ),
    "csv, bad split": (lambda root: csv_file(root, "cat/a.png,cat,train\ndog/a.png,dog,later\n"), ["line 2"]),
    "csv, some rows split": (
        lambda root: csv_file(root, "cat/a.png,cat,train\ndog/a.png,dog\n"),
        ["give every row a split (train, val, test), or none"],
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_folder_that_is_not_a_data_set_is_refused_in_one_line(tmp_path, case):
    make, words = REFUSED[case]
    root = make(tmp_path / "data")
    with pytest.raises(DataError) as refused:
        data_module(root)
    assert "\n" not in str(refused.value)
    for word in words:
        assert word in str(refused.value)


def test_data_images_without_a_root_is_refused_naming_data_root():
    """data.root has no default for one's own images: not the MNIST default (./data, or $LENET_DATA), which a user who
    trained on MNIST has, and which would be read as a folder of class folders ("data/MNIST holds no images")."""
    with pytest.raises(ConfigError, match=r"^data\.root is required: .*e\.g\. data\.root="):
        check(compose_config("data=images", "run_dir=x"))


def test_images_loose_in_a_split_folder_are_refused(tmp_path):
    """As images loose in data.root are: train/stray.png belongs to no class (left out silently, it would be lost)."""
    class_folders(tmp_path / "train", "cat", "dog")
    a_drawing(tmp_path / "train" / "stray.png")
    with pytest.raises(DataError, match="outside class folders"):
        listing(tmp_path)


def with_broken_images(root: Path) -> Path:
    shapes_folder(root, 4)
    (root / "bar" / "notes.png").write_text("not an image at all")
    (root / "cross" / "cut.jpg").write_bytes((root / "cross" / "000.jpg").read_bytes()[:300])
    return root


def test_files_that_are_not_images_are_listed_with_their_count(tmp_path):
    root = with_broken_images(tmp_path)
    with pytest.raises(DataError) as refused:
        data_module(root)
    refusal = str(refused.value)
    assert refusal.startswith("2 of 14 images cannot be used: bar/notes.png (not an image")
    assert "; cross/cut.jpg (" in refusal
    assert "\n" not in refusal
    assert not list((root / CACHE_FOLDER).glob("*.npz"))  # nothing kept of a data set refused


def test_the_same_file_in_two_splits_is_refused(tmp_path):
    class_folders(tmp_path / "train", "cat", "dog")
    a_drawing(tmp_path / "test" / "dog" / "b.png", 7)
    shutil.copy(tmp_path / "train" / "cat" / "a.png", tmp_path / "test" / "dog" / "copy.png")  # even relabelled
    with pytest.raises(DataError) as refused:
        data_module(tmp_path)
    assert str(refused.value).startswith(
        "1 image(s) are in two splits (the same file's bytes): train/cat/a.png = test/dog/copy.png."
    )


@pytest.mark.slow
def test_a_refusal_reaches_the_user_as_one_line_and_writes_nothing(tmp_path):
    root = with_broken_images(tmp_path / "data")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        lenet_command("train", "data=images", f"data.root={root}", f"hydra.run.dir={run_dir}", "logger=none"),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert one_line_error(done).startswith("error: 2 of 14 images cannot be used: bar/notes.png (not an image")
    assert "Traceback" not in done.stdout + done.stderr
    assert not run_dir.exists()


# End to end: trained on the shapes, then tested, used and exported with their names.


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(run dir, data root, metrics) of a two-epoch lenet.train run on 3 x 40 drawn shapes."""
    base = tmp_path_factory.mktemp("own-images")
    root, run_dir = shapes_folder(base / "shapes", 40), base / "run"
    metrics = train(compose_config("data=images", f"data.root={root}", *QUICK, f"run_dir={run_dir}"))
    return run_dir, root, metrics


def test_the_checkpoint_records_the_datas_classes_layout_and_normalization(trained):
    run_dir, root, metrics = trained
    checkpoint = Checkpoint.open(run_dir / "checkpoints" / "best.ckpt")
    data = checkpoint.data_settings
    assert (data["dataset"], data["classes"], data["layout"]) == ("images", list(SHAPES), "object")
    assert checkpoint.classes == list(SHAPES) and checkpoint.layout == "object"
    assert 0 < data["mean"] < 1 and 0 < data["std"] < 1  # computed from the training images
    assert checkpoint.contents["hyper_parameters"]["model"]["num_classes"] == 3
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["data"]["dataset"] == "images" and written["data"]["root"] == str(root.resolve())
    counts = [written["data"][f"{split}_images"] for split in ("train", "val", "test")]
    assert sum(counts) == 120 and all(counts)
    assert metrics["test/acc"] >= 0.8  # the shapes are learnt in two epochs


def predicted_classes(model: Path, inputs: list[Path], run_dir: Path) -> list[str]:
    listed = f"[{','.join(str(path) for path in inputs)}]"
    predict(compose_config(f"ckpt_path={model}", f"inputs={listed}", f"run_dir={run_dir}", config_name="predict"))
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as file:
        return [row["prediction"] for row in csv.DictReader(file)]


def test_predict_and_an_exported_file_name_the_folders_classes(trained, tmp_path):
    run_dir, root, _ = trained
    inputs = [path for shape in SHAPES for path in sorted((root / shape).iterdir())[:4]]
    from_checkpoint = predicted_classes(run_dir / "checkpoints" / "best.ckpt", inputs, tmp_path / "ckpt")
    right = [name == path.parent.name for name, path in zip(from_checkpoint, inputs, strict=True)]
    assert set(from_checkpoint) <= set(SHAPES) and sum(right) >= 9, from_checkpoint

    record = export(compose_config(
        f"ckpt_path={run_dir}", f"run_dir={tmp_path / 'export'}", "format=onnx", config_name="export"
    ))  # fmt: skip
    assert record["parity"]["passed"] and record["parity"]["images"] == trained[2]["data"]["test_images"]
    exported = tmp_path / "export" / "lenet.onnx"
    properties = {p.key: p.value for p in onnx.load(exported).metadata_props}
    assert json.loads(properties["classes"]) == list(SHAPES) and properties["layout"] == "object"
    assert properties["dataset"] == "images"
    assert predicted_classes(exported, inputs, tmp_path / "onnx") == from_checkpoint


def test_serve_answers_with_the_folders_classes(trained, tmp_path):
    from lenet.inference.model_files import load
    from test_serve import post, running

    run_dir, root, _ = trained
    cfg = compose_config(f"ckpt_path={run_dir}", f"run_dir={tmp_path}", "access_log=false", config_name="serve")
    with running(load(run_dir / "checkpoints" / "best.ckpt", device="cpu"), cfg) as url:
        assert httpx.get(f"{url}health").json()["classes"] == list(SHAPES)
        answers = [post(url, sorted((root / shape).iterdir())[0].read_bytes()).json() for shape in SHAPES]
    assert all([p["class"] for p in answer["probabilities"]] == list(SHAPES) for answer in answers)
    assert sum(answer["prediction"] == shape for answer, shape in zip(answers, SHAPES, strict=True)) >= 2, answers


def eval_config(run_dir: Path, eval_dir: Path, *overrides: str):
    cfg = compose_config(f"ckpt_path={run_dir}", *overrides, f"run_dir={eval_dir}", config_name="eval")
    check(cfg, "data")  # what lenet.cli does before the work
    return cfg


def test_eval_without_data_tests_the_runs_own_test_images(trained, tmp_path):
    run_dir, _, metrics = trained
    tested = evaluate(eval_config(run_dir, tmp_path / "eval"))
    assert tested["data"] == metrics["data"]  # the same images split off by data.split_seed, the same labels
    assert tested["test/acc"] == pytest.approx(metrics["test/acc"])


def test_eval_tests_the_split_its_run_made_whatever_its_test_size(tmp_path):
    root = shapes_folder(tmp_path / "shapes", 20)
    run_dir = tmp_path / "run"
    metrics = train(
        compose_config("data=images", f"data.root={root}", "data.test_size=0.3", *QUICK, f"run_dir={run_dir}")
    )
    assert metrics["data"]["test_images"] == 18  # 0.3 of 60
    tested = evaluate(eval_config(run_dir, tmp_path / "eval"))
    assert tested["data"] == metrics["data"]  # the run's own test images, not a default share of the folder


def test_eval_on_another_folder_tests_all_its_images_of_some_of_the_classes(trained, tmp_path):
    run_dir, _, _ = trained
    other = shapes_folder(tmp_path / "other", 10, seed=5, shapes=("bar", "cross"))
    metrics = evaluate(eval_config(run_dir, tmp_path / "eval", "data=images", f"data.root={other}"))
    assert metrics["data"]["test_images"] == 20 and metrics["data"]["root"] == str(other.resolve())
    matrix = np.array(metrics["test/confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == [10, 0, 10]  # the model's 3 classes, by name
    assert metrics["test/acc"] >= 0.8


def test_eval_refuses_a_folder_of_a_class_the_model_does_not_know(trained, tmp_path):
    run_dir, _, _ = trained
    other = shapes_folder(tmp_path / "other", 2, seed=5, shapes=("bar", "star"))
    with pytest.raises(DataError) as refused:
        evaluate(eval_config(run_dir, tmp_path / "eval", "data=images", f"data.root={other}"))
    assert str(refused.value) == (
        f"{other} holds classes the model does not know (star); its classes are bar, circle, cross: test it on images "
        "of those"
    )


def test_eval_refuses_a_data_set_of_other_classes_naming_both(trained, tmp_path):
    run_dir, _, _ = trained
    with pytest.raises(ConfigError) as refused:
        evaluate(eval_config(run_dir, tmp_path / "eval", "data=mnist", f"data.root={tmp_path}"))
    assert str(refused.value) == (
        "the model's classes are its own images' (bar, circle, cross); mnist's are others (0, 1, 2, 3, 4, 5, 6, 7, 8, "
        "9): test it on data of its own classes (data=images data.root=FOLDER)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("other", ["unknown class", "mnist"])
def test_eval_refusals_reach_the_user_as_one_line(trained, tmp_path, other):
    run_dir, _, _ = trained
    if other == "mnist":
        data, start = ["data=mnist", f"data.root={tmp_path}"], "error: the model's classes are its own images' ("
    else:
        folder = shapes_folder(tmp_path / "other", 2, seed=5, shapes=("bar", "star"))
        data, start = ["data=images", f"data.root={folder}"], f"error: {folder} holds classes the model does not know"
    done = subprocess.run(
        lenet_command("eval", f"ckpt_path={run_dir}", *data, f"hydra.run.dir={tmp_path / 'eval'}"),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert one_line_error(done).startswith(start)
    assert not (tmp_path / "eval").exists()


# The cache of prepared images, beside the data.


def test_a_second_load_reads_the_cache_and_a_changed_file_prepares_again(tmp_path, caplog):
    root = shapes_folder(tmp_path, 6)
    caplog.set_level(logging.INFO, logger="lenet.training.prepared_images")
    first = data_module(root).loaded
    assert "Preparing 18 images" in caplog.text
    assert len(list((root / CACHE_FOLDER).glob("object-*.npz"))) == 1
    caplog.clear()
    again = data_module(root).loaded
    assert "Preparing" not in caplog.text
    for split in first:
        assert torch.equal(first[split][0], again[split][0]) and torch.equal(first[split][1], again[split][1])

    found = listing(root)
    before, _ = prepared(found, "object")
    changed = found.files.index(root / "circle" / "001.png")
    save(drawn("circle", np.random.default_rng(99)), found.files[changed])  # the user redrew one circle
    after, _ = prepared(listing(root), "object")
    assert "Preparing 18 images" in caplog.text
    assert not np.array_equal(after[changed], before[changed])
    assert np.array_equal(np.delete(after, changed, axis=0), np.delete(before, changed, axis=0))
    assert len(list((root / CACHE_FOLDER).glob("object-*.npz"))) == 1  # the stale cache is gone
    caplog.clear()
    data_module(root, "data.layout=strokes")  # another layout, other images: a cache of its own
    assert "Preparing 18 images of" in caplog.text and "(strokes layout)" in caplog.text
    assert len(list((root / CACHE_FOLDER).glob("*.npz"))) == 2


def test_two_csvs_in_one_folder_keep_a_cache_each(tmp_path, caplog):
    """A train.csv and an extra.csv side by side (a second set for lenet.eval): reading one does not throw away the
    other's prepared images."""
    images = shapes_folder(tmp_path / "images", 4)
    files = sorted(images.rglob("*.*"))
    for name, chosen in (("train.csv", files), ("extra.csv", files[::2])):
        (tmp_path / name).write_text("".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in chosen))
    caplog.set_level(logging.INFO, logger="lenet.training.prepared_images")
    data_module(tmp_path / "train.csv")
    data_module(tmp_path / "extra.csv")
    caplog.clear()
    data_module(tmp_path / "train.csv")
    assert "Preparing" not in caplog.text


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder of shapes lenet cannot write to: on a tmpfs mounted read-only (root writes through any chmod), or a
    folder without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    as_root = os.geteuid() == 0
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)]
    mounted = as_root and bool(shutil.which("mount")) and subprocess.run(mount, capture_output=True).returncode == 0
    if as_root and not mounted:
        pytest.skip("root writes through chmod, and mounting a read-only tmpfs is not allowed here")
    shapes_folder(folder, 10)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)
    else:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755)  # so that pytest can remove it


def test_a_folder_lenet_cannot_write_to_still_trains_without_a_cache(read_only_folder, tmp_path):
    run_dir = tmp_path / "run"
    metrics = train(compose_config("data=images", f"data.root={read_only_folder}", *QUICK, f"run_dir={run_dir}"))
    assert metrics["epochs"] == 2 and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert not (read_only_folder / CACHE_FOLDER).exists()


# The split by data.split_seed.


def test_a_refusal_naming_a_file_that_is_not_utf8_prints_anywhere(tmp_path):
    root = shapes_folder(tmp_path / "shapes", 2)
    os.mkdir(os.fsencode(root) + b"/caf\xe9")  # a Latin-1 name: not UTF-8
    with pytest.raises(DataError) as refused:
        listing(root)
    line = str(refused.value)
    assert "caf\\xe9 holds no images" in line and line.encode("utf-8") and line.isprintable()


def test_splits_that_leave_no_training_images_are_refused_naming_both_sizes(tmp_path):
    root = shapes_folder(tmp_path / "shapes", 10)
    with pytest.raises(DataError, match=r"data.test_size=0.5 and data.val_size=100 leave no training images in "):
        data_module(root, "data.test_size=0.5", "data.val_size=100")


def test_the_split_is_the_same_for_the_same_seed_and_keeps_copies_together(tmp_path):
    root = shapes_folder(tmp_path, 12)
    for copy in range(6):
        shutil.copy(root / "bar" / "001.png", root / "bar" / f"copy{copy}.png")
    found = listing(root)
    _, digests = prepared(found, "object")
    original = digests[found.files.index(root / "bar" / "001.png")]
    copies = [i for i, digest in enumerate(digests) if digest == original]
    assert len(copies) == 7
    splits_by_seed = {}
    for seed in range(8):
        chosen = assigned_splits(found, digests, val_size=0.2, test_size=0.3, seed=seed)
        assert sorted(i for indexes in chosen.values() for i in indexes.tolist()) == list(range(len(found.files)))
        holding = [split for split, indexes in chosen.items() if set(copies) & set(indexes.tolist())]
        assert len(holding) == 1, (seed, holding)  # all seven in one split
        splits_by_seed[seed] = {split: indexes.tolist() for split, indexes in chosen.items()}
    again = assigned_splits(found, digests, val_size=0.2, test_size=0.3, seed=3)
    assert {split: indexes.tolist() for split, indexes in again.items()} == splits_by_seed[3]
    assert len({tuple(chosen["test"]) for chosen in splits_by_seed.values()}) > 1  # another seed, other test images


def test_the_data_modules_test_images_depend_on_split_seed_only(tmp_path):
    root = shapes_folder(tmp_path, 10)
    tests = [data_module(root, f"data.split_seed={split}", f"seed={seed}").loaded["test"] for split, seed in
             ((0, 1), (0, 2), (1, 1))]  # fmt: skip
    assert torch.equal(tests[0][0], tests[1][0]) and torch.equal(tests[0][1], tests[1][1])
    assert not torch.equal(tests[0][0], tests[2][0])


# The pool: many files prepared on every core, in their order.


def test_the_pool_prepares_what_one_process_prepares_in_order(tmp_path, monkeypatch):
    root = shapes_folder(tmp_path, 7)
    (root / "bar" / "broken.png").write_text("not an image")
    paths = sorted(root.rglob("*.*"))
    monkeypatch.setattr(pool, "POOL_FROM", 4)
    monkeypatch.setattr(pool, "CHUNK", 3)  # several chunks per worker: their order must not matter
    layout = LAYOUTS["object"]
    pooled = list(pool.prepared_files(paths, layout, processes=2))
    alone = [pool.prepared_file(path, layout) for path in paths]
    assert len(pooled) == len(paths) == 22
    for one, other in zip(pooled, alone, strict=True):
        assert (one.error, one.digest) == (other.error, other.digest)
        assert one.image is None and other.image is None or np.array_equal(one.image, other.image)
    assert sum(bool(prepared.error) for prepared in pooled) == 1
