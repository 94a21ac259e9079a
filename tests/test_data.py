import gzip
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from conftest import SIZES, VAL_SIZE, synthetic_split, write_dataset, write_idx
from lenet.data import DataError, InMemoryLoader, MNISTDataModule


def ready(root, **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(root=str(root), val_size=VAL_SIZE, **kwargs)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


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
        MNISTDataModule(root=str(tmp_path / "empty")).prepare_data()
    assert not any((tmp_path / "empty").rglob("*.gz")), "a failed download must not leave files behind"


def test_a_data_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file"):
        MNISTDataModule(root=str(tmp_path / "file")).prepare_data()


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
            MNISTDataModule(root=str(tmp_path / "data")).prepare_data()
    finally:
        server.shutdown()
    assert list((tmp_path / "data").iterdir()) == [], "no partial file may stay behind"
