import pytest
import torch
from torchvision import datasets

from conftest import SIZES, VAL_SIZE, synthetic_split, write_dataset
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
