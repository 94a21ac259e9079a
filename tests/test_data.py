import gzip
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision import datasets

from conftest import (
    FASHION_MNIST,
    SIZES,
    VAL_SIZE,
    Mirror,
    compose_config,
    datamodule,
    fixture_overrides,
    md5s,
    synthetic_split,
    write_dataset,
)
from lenet import CONFIG_DIR
from lenet.frame.errors import DataError
from lenet.frame.mnist_family import DATASETS, LAYOUTS, DataSet
from lenet.inference.trained_model import Predictor
from lenet.training.batches import InMemoryLoader
from lenet.training.datamodule import MNISTDataModule
from lenet.training.datasets import known_test_set, torchvision_class
from lenet.training.fit import train
from lenet.training.idx import ALL_FILES, read_idx, write_idx


def ready(root, **settings) -> MNISTDataModule:
    return datamodule(root, *(f"data.{key}={value}" for key, value in settings.items()))


def unprepared(root, dataset: str = "mnist") -> MNISTDataModule:
    return instantiate(compose_config(f"data={dataset}", f"data.root={root}", "run_dir=x").data, num_classes=10)


def test_flat_gzip_flat_plain_and_torchvision_layouts_load_the_same_data(flat_root, torchvision_root, tmp_path):
    plain_root = write_dataset(tmp_path / "plain", gz=False)
    loaded = [ready(root).splits for root in (flat_root, plain_root, torchvision_root)]
    for split in ("train", "val", "test"):
        for other in loaded[1:]:
            torch.testing.assert_close(loaded[0][split], other[split], rtol=0, atol=0)


def test_splits_keep_test_apart_and_carve_validation_from_train(flat_root):
    splits = ready(flat_root).splits
    assert len(splits["val"][1]) == VAL_SIZE
    assert len(splits["train"][1]) == SIZES["train"] - VAL_SIZE
    _, test_labels = synthetic_split(SIZES["test"], seed=1)  # the file written as the test split
    assert torch.equal(splits["test"][1], torch.as_tensor(test_labels))
    train_rows = {tuple(row.tolist()) for row in splits["train"][0].flatten(1)[:, ::7]}
    assert not any(tuple(row.tolist()) in train_rows for row in splits["val"][0].flatten(1)[:, ::7])


def test_the_validation_split_is_the_same_every_time_and_only_split_seed_changes_it(flat_root):
    first, again = ready(flat_root, seed=1).splits["val"], ready(flat_root, seed=2).splits["val"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = ready(flat_root, split_seed=5).splits["val"]
    assert not torch.equal(first[1], other[1])


def test_splits_stay_uint8_and_batches_are_normalized_with_the_configured_mean_and_std(flat_root):
    datamodule = ready(flat_root, mean=0.5, std=0.5, eval_batch_size=SIZES["test"])
    stored, _ = datamodule.splits["test"]
    assert stored.dtype == torch.uint8 and stored.shape == (SIZES["test"], 1, 28, 28)
    images, _ = datamodule.on_after_batch_transfer(next(iter(datamodule.test_dataloader())), 0)
    raw, _ = synthetic_split(SIZES["test"], seed=1)
    assert images.dtype == torch.float32
    torch.testing.assert_close(images[:, 0], (torch.as_tensor(raw).float() / 255 - 0.5) / 0.5)


def test_training_batches_cover_every_image_once_per_epoch_in_a_new_order():
    images, labels = torch.arange(10.0).view(10, 1), torch.arange(10)
    loader = InMemoryLoader(images, labels, batch_size=4, generator=torch.Generator().manual_seed(0))
    epochs = [torch.cat([batch_labels for _, batch_labels in loader]) for _ in range(2)]
    assert len(loader) == 3 and [len(y) for _, y in loader] == [4, 4, 2]
    assert all(sorted(epoch.tolist()) == list(range(10)) for epoch in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    for batch_images, batch_labels in loader:
        assert torch.equal(batch_images[:, 0].long(), batch_labels)  # images stay paired with labels


def test_evaluation_batches_keep_file_order():
    loader = InMemoryLoader(torch.zeros(5, 1), torch.arange(5), batch_size=2)
    assert torch.cat([y for _, y in loader]).tolist() == [0, 1, 2, 3, 4]


def test_shuffle_state_round_trips_so_a_resumed_run_sees_the_same_order(flat_root):
    datamodule = ready(flat_root, seed=3)
    state = datamodule.state_dict()
    expected = [y for _, y in datamodule.train_dataloader()]
    resumed = ready(flat_root, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [y for _, y in resumed.train_dataloader()], strict=True))


def test_a_failed_download_says_how_to_supply_the_files(tmp_path, monkeypatch):
    # Port 9 on loopback refuses at once: the real download code runs and fails, with no network.
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match=r"could not download MNIST.*data.root=FOLDER"):
        unprepared(tmp_path / "empty").prepare_data()
    assert not (tmp_path / "empty").exists(), "a failed download must not leave files, nor the folder it made"


def test_a_data_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file"):
        unprepared(tmp_path / "file").prepare_data()


def broken_copy(tmp_path, damage) -> Path:
    """A flat dataset folder whose files `damage(folder)` then breaks."""
    root = write_dataset(tmp_path / "broken", gz=True)
    damage(root)
    return root


def gunzip(path):
    plain = path.with_suffix("")
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return plain


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "t10k-labels-idx1-ubyte.gz").unlink(), r"lacks t10k-labels-idx1-ubyte \(or .gz\)"),
        (
            lambda r: (r / "train-images-idx3-ubyte.gz").write_bytes((r / "train-labels-idx1-ubyte.gz").read_bytes()),
            r"train-images-idx3-ubyte.gz: not an IDX images file \(found 0x00000801, expected 0x00000803\)",
        ),
        (
            lambda r: (p := gunzip(r / "train-images-idx3-ubyte.gz")).write_bytes(p.read_bytes()[:-100]),
            r"train-images-idx3-ubyte: 940716 bytes where its header \(1200 images\) needs 940816",
        ),
        (
            lambda r: (p := r / "train-images-idx3-ubyte.gz").write_bytes(p.read_bytes()[:-1000]),
            r"train-images-idx3-ubyte.gz: damaged gzip file",
        ),
        (
            lambda r: (p := r / "train-labels-idx1-ubyte.gz").write_bytes(_flip_byte(p.read_bytes(), 400)),
            r"train-labels-idx1-ubyte.gz: damaged gzip file",
        ),
        (
            lambda r: write_idx(r / "t10k-labels-idx1-ubyte.gz", np.zeros(399, np.uint8)),
            r"t10k-images-idx3-ubyte.gz has 400 images but .*t10k-labels-idx1-ubyte.gz 399 labels",
        ),
    ],
    ids=["missing", "wrong-magic", "truncated", "truncated-gz", "corrupted-gz", "count-mismatch"],
)
def test_broken_idx_files_are_named_with_what_is_wrong_and_how_to_fix_it(damage, message, tmp_path):
    root = broken_copy(tmp_path, damage)
    with pytest.raises(DataError, match=message) as error:
        ready(root)
    fixes = ("put all four IDX files there", "delete it and download again, or replace it with a good copy")
    assert str(error.value).endswith(fixes)


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


class CutOffServer(http.server.BaseHTTPRequestHandler):
    """Promises a full-size file, sends 1 kB of it, and hangs up: a download that fails mid-way."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(9_912_422))  # MNIST's train-images .gz
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(1022))
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_download_cut_off_mid_way_fails_cleanly_and_leaves_nothing(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutOffServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
        with pytest.raises(DataError, match="could not download MNIST into .*pass data.root=FOLDER"):
            unprepared(tmp_path / "data").prepare_data()
    finally:
        server.shutdown()
    assert not (tmp_path / "data").exists(), "no partial file, nor the folder the download made, may stay behind"


# --- Downloads: the success path, concurrent jobs, files already there ---


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "kmnist"])
def test_a_run_downloads_verifies_moves_the_files_into_place_and_trains(dataset, tmp_path, monkeypatch):
    served = write_dataset(tmp_path / "served", gz=True)
    downloader = torchvision_class(dataset)
    with Mirror(served) as mirror:
        monkeypatch.setattr(downloader, "mirrors", [mirror.url])
        monkeypatch.setattr(downloader, "resources", md5s(served))
        root = tmp_path / "data"
        cfg = compose_config(*fixture_overrides(root, tmp_path / "run"), f"data={dataset}", "debug=fast_dev_run")
        metrics = train(cfg)
    raw = root / downloader.__name__ / "raw"
    for name in ALL_FILES:  # torchvision checked each .gz against its md5, then extracted it
        assert (raw / name).read_bytes() == gzip.decompress((served / f"{name}.gz").read_bytes())
    assert sorted(mirror.requests) == sorted(f"/{name}.gz" for name in ALL_FILES)
    assert not [p for p in root.iterdir() if p.name.startswith(".download-")], "the temporary folder is gone"
    assert metrics["data"]["dataset"] == dataset and metrics["epochs"] == 1


def test_a_file_whose_md5_differs_is_refused(tmp_path, monkeypatch):
    served = write_dataset(tmp_path / "served", gz=True)
    with Mirror(served) as mirror:
        monkeypatch.setattr(datasets.MNIST, "mirrors", [mirror.url])
        monkeypatch.setattr(datasets.MNIST, "resources", [(name, "0" * 32) for name, _ in md5s(served)])
        with pytest.raises(DataError, match="could not download MNIST into"):
            unprepared(tmp_path / "data").prepare_data()
    assert not (tmp_path / "data").exists()


PREPARE = """
import sys
from torchvision import datasets
from conftest import compose_config
from hydra.utils import instantiate
datasets.MNIST.mirrors = [sys.argv[1]]
datasets.MNIST.resources = eval(sys.argv[2])
instantiate(compose_config(f"data.root={sys.argv[3]}", "run_dir=x").data, num_classes=10).prepare_data()
"""


@pytest.mark.slow
def test_parallel_jobs_download_once_and_share_the_files(tmp_path, monkeypatch):
    served = write_dataset(tmp_path / "served", gz=True)
    with Mirror(served) as mirror:
        monkeypatch.setattr(datasets.MNIST, "mirrors", [mirror.url])
        monkeypatch.setattr(datasets.MNIST, "resources", md5s(served))
        unprepared(tmp_path / "alone").prepare_data()
        one_download, mirror.requests = mirror.requests, {}
        mirror.delay = 0.3  # slow enough that both jobs want the files at once
        command = [sys.executable, "-c", PREPARE, mirror.url, repr(md5s(served)), str(tmp_path / "shared")]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        jobs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [job.communicate(timeout=120)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    assert mirror.requests == one_download, "one job downloaded, the other waited for it"
    assert len(ready(tmp_path / "shared").splits["test"][1]) == SIZES["test"]


def test_torchvision_layout_with_only_the_gz_files_is_used_as_it_is(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data" / "MNIST" / "raw", gz=True)
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # a download would fail
    assert len(ready(tmp_path / "data").splits["test"][1]) == SIZES["test"]


# --- A wrong data.root says where it looked and where the files are ---


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("typo", r"data.root=.*/typo does not exist \(the download made it, then removed it again\)"),
        ("", r"Looked for the IDX files in .*/datasets and in .*/datasets/MNIST/raw: .*/datasets holds fashion/; "
             r"IDX files are in .*/datasets/fashion: pass that as data.root"),
        ("fashion/deeper", r"does not exist .*; IDX files are in .*/datasets/fashion: pass that as data.root"),
    ],
    ids=["typo", "parent", "one-level-too-deep"],
)  # fmt: skip
def test_a_wrong_data_root_says_where_it_looked_and_where_the_files_are(root, message, tmp_path, monkeypatch):
    write_dataset(tmp_path / "datasets" / "fashion", gz=True)
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match=message):
        unprepared(tmp_path / "datasets" / root).prepare_data()
    made = [p.name for p in (tmp_path / "datasets").iterdir() if p.name != ".download.lock"]
    assert made == ["fashion"], "nothing made, nothing left but the lock file of the download"


# --- Values that used to crash later ---


def test_an_idx_file_cut_inside_its_header_is_named(tmp_path):
    root = write_dataset(tmp_path / "data", gz=False)
    (root / "train-images-idx3-ubyte").write_bytes(bytes.fromhex("00000803") + bytes(6))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: its header is cut short \(10 of 16 bytes\)"):
        ready(root)


def test_labels_outside_the_models_classes_are_named(flat_root, tmp_path):
    with pytest.raises(DataError, match=r"has label 9, but model.num_classes=5 allows 0..4: set model.num_classes=10"):
        datamodule(flat_root, num_classes=5)
    root = write_dataset(tmp_path / "data", gz=True)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(SIZES["test"], 12))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz has label 12, but model.num_classes=10"):
        datamodule(root)


@pytest.mark.parametrize(("val_size", "count"), [("0.0833333", 100), ("0.5", 600), ("0.0", 0), ("37", 37)])
def test_val_size_is_a_share_of_the_training_images_or_a_count(val_size, count, flat_root):
    splits = ready(flat_root, val_size=val_size).splits
    assert len(splits["val"][1]) == count and len(splits["train"][1]) == SIZES["train"] - count


def test_a_val_size_that_leaves_no_training_images_is_refused(flat_root):
    with pytest.raises(DataError, match=r"data.val_size=1200 leaves no training images of 1200"):
        ready(flat_root, val_size=1200)


def test_a_last_training_batch_of_one_joins_the_one_before_and_evaluation_keeps_every_image():
    images, labels = torch.zeros(55, 1), torch.arange(55)
    shuffled = InMemoryLoader(images, labels, 27, generator=torch.Generator().manual_seed(0), train=True)
    assert [len(y) for _, y in shuffled] == [27, 28] and len(shuffled) == 2
    assert [len(y) for _, y in InMemoryLoader(images, labels, 27, train=True)] == [27, 28]
    assert [len(y) for _, y in InMemoryLoader(images, labels, 27)] == [27, 27, 1]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_share_out_evaluation_images_once_each_and_training_in_equal_steps(world_size):
    images, labels = torch.zeros(100, 1), torch.arange(100)
    evaluated = [torch.cat([y for _, y in InMemoryLoader(images, labels, 8, rank=r, world_size=world_size)])
                 for r in range(world_size)]  # fmt: skip
    assert sorted(torch.cat(evaluated).tolist()) == list(range(100))
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731 (every rank draws the same order)
    trained = [
        list(InMemoryLoader(images, labels, 8, generator(), r, world_size, train=True)) for r in range(world_size)
    ]
    assert len({len(batches) for batches in trained}) == 1
    seen = torch.cat([y for batches in trained for _, y in batches]).tolist()
    assert len(seen) == len(set(seen)) == 100 - 100 % world_size


# --- data.augment ---


def batch_of(data: MNISTDataModule, training: bool, rank: int = 0, world_size: int = 1, n: int = 64):
    """A training batch as Lightning hands it over: uint8 in, normalized floats out, from `data`'s own generator."""
    data.trainer = SimpleNamespace(training=training, global_rank=rank, world_size=world_size,
                                   lightning_module=SimpleNamespace(dtype=torch.float32))  # fmt: skip
    images, labels = data.splits["train"][0][:n], data.splits["train"][1][:n]
    return data.on_after_batch_transfer((images[rank::world_size], labels[rank::world_size]), 0)[0]


def test_augment_moves_training_images_only_and_repeats_per_seed(flat_root):
    plain = batch_of(ready(flat_root), training=True)
    augmented = ready(flat_root, augment=True)
    moved = batch_of(augmented, training=True)
    assert moved.shape == plain.shape and moved.dtype == torch.float32
    differences = (moved - plain).abs().flatten(1).amax(1)
    assert (differences > 0.5).all(), "every image moved"
    assert torch.equal(batch_of(augmented, training=False), plain), "evaluation images are left alone"
    assert torch.equal(batch_of(ready(flat_root, augment=True), training=True), moved), "the same seed, the same"
    assert not torch.equal(batch_of(ready(flat_root, augment=True, seed=7), training=True), moved)
    assert not torch.equal(batch_of(augmented, training=True), moved), "each batch draws anew"
    # background stays background: what moves in from outside the image is black, as MNIST's borders are
    assert moved.min() == pytest.approx(plain.min())


def test_augment_continues_across_a_resume_and_ddp_ranks_transform_as_one_process(flat_root):
    first = ready(flat_root, augment=True)
    batch_of(first, training=True)
    saved = first.state_dict()
    resumed = ready(flat_root, augment=True)
    resumed.load_state_dict(saved)
    assert torch.equal(batch_of(resumed, training=True), batch_of(first, training=True))
    whole = batch_of(ready(flat_root, augment=True), training=True)
    for rank in (0, 1):
        share = batch_of(ready(flat_root, augment=True), training=True, rank=rank, world_size=2)
        assert torch.allclose(share, whole[rank::2], atol=1e-5), rank
    assert "augment" not in ready(flat_root).state_dict(), "without augment, checkpoints are unchanged"


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_under_data_mnist_is_refused_naming_the_right_data(tmp_path):
    """data.root at Fashion-MNIST with the default data=mnist trained a model named "mnist" with digit classes."""
    data = instantiate(compose_config(f"data.root={FASHION_MNIST}", "run_dir=x").data, num_classes=10)
    with pytest.raises(DataError, match=f"^data.root={FASHION_MNIST} holds fashion_mnist's files, not mnist's: "
                                        "pass data=fashion_mnist"):  # fmt: skip
        data.load()


def test_a_test_set_with_mnists_class_counts_and_grey_level_is_mnist(tmp_path):
    counts = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
    labels = np.repeat(np.arange(10), counts)
    images = (np.random.default_rng(0).random((len(labels), 28, 28)) < 0.1325) * 255
    assert known_test_set(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels)) == "mnist"
    assert known_test_set(torch.from_numpy((images // 2).astype(np.uint8)), torch.from_numpy(labels)) is None
    assert known_test_set(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels[1:])) is None


# --- One record per data set ---


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_data_set_has_every_fact_and_its_config_takes_them_from_its_record(name):
    record = DATASETS[name]
    assert record.name == name and record.layout in LAYOUTS
    downloader = torchvision_class(name)  # downloads it, and names its classes
    assert list(record.classes) == [label.split(" - ")[0] for label in downloader.classes]  # MNIST's "0 - zero"
    assert len(record.classes) == len(record.test_counts)
    assert (Path(CONFIG_DIR) / "data" / f"{name}.yaml").is_file()
    data = compose_config(f"data={name}", "run_dir=x").data
    assert (data.dataset, data.mean, data.std, data.layout) == (name, record.mean, record.std, record.layout)
    assert list(data.classes) == list(record.classes)


def test_a_data_set_lacking_a_fact_is_refused_where_its_record_is_made():
    facts = dict(vars(DATASETS["mnist"]))
    with pytest.raises(TypeError, match="layout"):
        DataSet(**{key: value for key, value in facts.items() if key != "layout"})
    with pytest.raises(ValueError, match="layout"):
        DataSet(**{**facts, "layout": None})
    with pytest.raises(ValueError, match="layout"):
        DataSet(**{**facts, "layout": "upright"})  # not a name in LAYOUTS
    with pytest.raises(ValueError, match="9 class names for 10 classes"):
        DataSet(**{**facts, "classes": facts["classes"][:9]})
    assert DataSet(**{**facts, "layout": "object"}).layout == "object"


def test_a_data_sets_own_mean_and_std_are_what_its_checkpoints_record_and_an_override_replaces_them(tmp_path):
    record = DATASETS["kmnist"]
    assert (unprepared(tmp_path, "kmnist").hparams.mean, unprepared(tmp_path, "kmnist").hparams.std) == (
        record.mean, record.std,
    )  # fmt: skip
    data = compose_config("data=kmnist", "data.mean=0.5", f"data.root={tmp_path}", "run_dir=x").data
    assert instantiate(data, num_classes=10).hparams_initial["mean"] == 0.5  # what a checkpoint saves


def test_a_null_mean_and_std_are_the_training_images_own(flat_root):
    data = datamodule(flat_root, "data.mean=null", "data.std=null")
    pixels = read_idx(flat_root / "train-images-idx3-ubyte.gz", "images").float() / 255  # the files' training images
    assert (data.hparams.mean, data.hparams.std) == (round(float(pixels.mean()), 4), round(float(pixels.std()), 4))
    assert (data.hparams.mean, data.hparams.std) != (DATASETS["mnist"].mean, DATASETS["mnist"].std)


def test_a_trained_model_normalizes_bit_for_bit_as_training_does(flat_root):
    data = datamodule(flat_root, "data=fashion_mnist", f"data.eval_batch_size={SIZES['test']}")
    pixels, _ = next(iter(data.test_dataloader()))
    trained, _ = data.on_after_batch_transfer((pixels, None), 0)
    hp = data.hparams
    predictor = Predictor(
        classes=[], mean=hp.mean, std=hp.std, dataset=hp.dataset, layout=hp.layout, source=Path(), checkpoint="",
        model=None, forward=None,
    )  # fmt: skip
    assert np.array_equal(predictor.normalize(pixels[:, 0].numpy()), trained.numpy())
