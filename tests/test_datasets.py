"""Tests for acc.datasets: the Dataset format, splits, batch streams and lookup by name."""

from __future__ import annotations

import pytest
import torch

from acc.catalog import dataset_names, load_dataset
from acc.datasets import BatchStream, Dataset


def toy(n: int = 50) -> Dataset:
    """A small dataset whose item i has every pixel, label and target derived from i."""
    idx = torch.arange(n)
    return Dataset(
        images=(idx % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous(),
        labels=idx % 10,
        targets={"thickness": idx.float(), "slant": -idx.float()},
        meta={"generator": "toy", "params": {"k": 1}, "seed": 3, "created": "2024-01-01T00:00:00"},
        name="toy",
    )


# --- Dataset ---------------------------------------------------------------------------------


def test_validation_names_the_problem():
    good = toy(4)
    with pytest.raises(ValueError, match="images"):
        Dataset(good.images.float(), good.labels, {}, {})
    with pytest.raises(ValueError, match="labels"):
        Dataset(good.images, good.labels[:3], {}, {})
    with pytest.raises(ValueError, match="target 'x'"):
        Dataset(good.images, good.labels, {"x": torch.zeros(4, dtype=torch.float64)}, {})
    with pytest.raises(ValueError, match="meta"):
        Dataset(good.images, good.labels, {}, [])


def test_split_deterministic_disjoint_covering():
    ds = toy(100)
    train, val = ds.split(0.2, seed=1)
    train_ids = set(train.targets["thickness"].long().tolist())
    val_ids = set(val.targets["thickness"].long().tolist())
    assert len(val) == 20 and len(train) == 80
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == set(range(100))
    again_train, again_val = ds.split(0.2, seed=1)
    assert torch.equal(again_val.targets["thickness"], val.targets["thickness"])
    assert torch.equal(again_train.images, train.images)
    other_val = ds.split(0.2, seed=2)[1]
    assert not torch.equal(other_val.targets["thickness"], val.targets["thickness"])
    with pytest.raises(ValueError):
        ds.split(1.0)


def test_batch_format():
    ds = toy(30)
    batch = ds.batch(torch.tensor([0, 5, 29]))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (3, 1, 28, 28)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert torch.allclose(batch["image"][:, 0, 0, 0], torch.tensor([0, 5, 29]) / 255.0)
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 5, 9]
    assert batch["targets"]["thickness"].dtype == torch.float32
    assert batch["targets"]["slant"].tolist() == [0.0, -5.0, -29.0]


def test_save_load_round_trip(tmp_path):
    ds = toy(20).subset(torch.arange(5, 15))  # a view-derived subset must save on its own
    path = tmp_path / "sub" / "thick.pt"
    ds.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["thick.pt"]  # no temp file left behind
    back = Dataset.load(path)
    assert back.name == "thick" and len(back) == 10
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.targets.keys() == ds.targets.keys()
    assert all(torch.equal(back.targets[k], ds.targets[k]) for k in ds.targets)
    assert back.meta == ds.meta
    assert Dataset.load(path, name="other").name == "other"


class Sneaky:
    """Not a tensor, dict or number: must never be unpickled from a dataset file."""


def test_load_refuses_arbitrary_objects(tmp_path):
    ds = toy(3)
    path = tmp_path / "evil.pt"
    torch.save({"images": ds.images, "labels": ds.labels, "targets": {}, "meta": {"x": Sneaky()}}, path)
    with pytest.raises(ValueError, match="evil.pt.*Sneaky"):
        Dataset.load(path)


def test_load_malformed_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="garbage.pt"):
        Dataset.load(garbage)
    partial = tmp_path / "partial.pt"
    torch.save({"images": toy(2).images}, partial)
    with pytest.raises(ValueError, match="missing labels"):
        Dataset.load(partial)
    wrong = tmp_path / "wrong.pt"
    torch.save({"images": torch.zeros(2, 28, 28), "labels": torch.zeros(2), "targets": {}, "meta": {}}, wrong)
    with pytest.raises(ValueError, match="wrong.pt.*images"):
        Dataset.load(wrong)


def test_save_refuses_unloadable_meta(tmp_path):
    ds = toy(2)
    ds.meta["when"] = object()
    with pytest.raises(ValueError, match="meta"):
        ds.save(tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


# --- BatchStream -----------------------------------------------------------------------------


def drawn_ids(batch: dict) -> list[int]:
    return batch["targets"]["thickness"].long().tolist()


def test_batch_stream_covers_each_epoch_once():
    stream = BatchStream(toy(100), batch_size=10, seed=0)
    first_epoch = [i for _ in range(10) for i in drawn_ids(stream.next())]
    assert sorted(first_epoch) == list(range(100)) and stream.epoch == 0
    second = drawn_ids(stream.next())
    assert stream.epoch == 1 and len(second) == 10


def test_batch_stream_uneven_epochs_straddle():
    stream = BatchStream(toy(23), batch_size=5, seed=4)
    ids = [i for _ in range(14) for i in drawn_ids(stream.next())]  # 70 items: 3 passes and a bit
    for start in (0, 23, 46):
        assert sorted(ids[start:start + 23]) == list(range(23))
    assert stream.epoch == 3


def test_batch_stream_reproducible_by_seed():
    def draws(seed: int) -> list[list[int]]:
        stream = BatchStream(toy(40), batch_size=8, seed=seed)
        return [drawn_ids(stream.next()) for _ in range(12)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_batch_stream_batch_format_and_size_check():
    stream = BatchStream(toy(16), batch_size=16, seed=0, device="cpu")
    batch = stream.next()
    assert batch["image"].shape == (16, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and set(batch["targets"]) == {"thickness", "slant"}
    # Every field of a batch row comes from the same item.
    assert torch.equal(batch["label"], batch["targets"]["thickness"].long() % 10)
    assert torch.allclose(batch["image"][:, 0, 3, 3] * 255, batch["targets"]["thickness"])
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(toy(16), batch_size=17)


# --- lookup by name --------------------------------------------------------------------------


def test_load_dataset_by_name(tmp_path, no_mnist_dir):
    first, second = tmp_path / "a", tmp_path / "b"
    toy(5).save(first / "thick.pt")
    toy(9).save(second / "thick.pt")
    toy(3).save(second / "slant-2.pt")
    (second / "notes.txt").write_text("ignored")
    dirs = [first, second, tmp_path / "missing"]
    assert dataset_names(dirs) == ["mnist", "slant-2", "thick"]
    assert len(load_dataset("thick", dirs)) == 5  # the first folder wins
    assert load_dataset("slant-2", dirs).name == "slant-2"
    assert len(load_dataset("mnist", dirs, mnist_cache=tmp_path / "cache")) == 4000
    assert load_dataset("mnist_test", dirs).name == "mnist_test"
    for bad in ("../x", "a/b", "Thick", "", "x.pt"):
        with pytest.raises(ValueError, match="invalid dataset name"):
            load_dataset(bad, dirs)
    with pytest.raises(KeyError, match="thick"):
        load_dataset("nope", dirs)
