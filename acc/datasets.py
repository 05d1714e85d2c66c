"""Datasets: the in-memory `Dataset`, its `.pt` file format, and batches.

A dataset is N grayscale 28x28 images (uint8), a digit label per image (-1 when unknown) and any
number of named float targets. On disk it is `{"images", "labels", "targets", "meta"}` saved with
`torch.save` and read back with `weights_only=True`, so a dataset file can never run code.

Where the datasets come from: `acc.mnist` (real digits) and `acc.catalog` (a dataset by name).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

Batch = dict  # {"image": float32 [B,1,28,28] in [0,1], "label": int64 [B] (-1 when unknown), "targets": {name: float32 [B]}}

IMAGE_SHAPE = (1, 28, 28)


@dataclass
class Dataset:
    """Images, labels and named targets, all on one device, validated on construction."""

    images: torch.Tensor  # uint8 [N,1,28,28]
    labels: torch.Tensor  # int64 [N], -1 when unknown
    targets: dict[str, torch.Tensor]  # name -> float32 [N]
    meta: dict = field(default_factory=dict)  # {"generator", "params", "seed", "created", "source", ...}
    name: str = ""

    def __post_init__(self) -> None:
        """Check shapes, dtypes and devices; raise ValueError naming what is wrong."""
        who = f"dataset {self.name!r}" if self.name else "dataset"
        images = self.images
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"{who}: images must be a uint8 tensor [N,1,28,28], got {_describe(images)}")
        n = images.shape[0]
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 \
                or tuple(self.labels.shape) != (n,):
            raise ValueError(f"{who}: labels must be an int64 tensor [{n}], got {_describe(self.labels)}")
        if not isinstance(self.targets, dict):
            raise ValueError(f"{who}: targets must be a dict of name -> tensor, got {type(self.targets).__name__}")
        for key, value in self.targets.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{who}: target names must be non-empty strings, got {key!r}")
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or tuple(value.shape) != (n,):
                raise ValueError(f"{who}: target {key!r} must be a float32 tensor [{n}], got {_describe(value)}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"{who}: meta must be a dict, got {type(self.meta).__name__}")
        devices = {t.device for t in (images, self.labels, *self.targets.values())}
        if len(devices) > 1:
            raise ValueError(f"{who}: all tensors must be on one device, got {sorted(map(str, devices))}")

    def class_counts(self) -> list[int]:
        """Images per digit class (0..9, or more classes if labels go higher); empty when no
        image has a label (-1 throughout)."""
        known = self.labels[self.labels >= 0].cpu()
        return torch.bincount(known, minlength=10).tolist() if len(known) else []

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> Dataset:
        """The items at `index` (int64 positions or a bool mask), as a new Dataset."""
        index = index.to(self.images.device)
        return Dataset(
            images=self.images[index],
            labels=self.labels[index],
            targets={k: v[index] for k, v in self.targets.items()},
            meta=dict(self.meta),
            name=self.name,
        )

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, validation): a disjoint, covering random split fixed by `seed`; both keep the original order."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n = len(self)
        n_val = max(1, round(n * val_fraction))
        if n_val >= n:
            raise ValueError(f"cannot split {n} items with val_fraction={val_fraction}: nothing left to train on")
        # A CPU generator gives the same permutation whatever device the data lives on.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
        return self.subset(train), self.subset(val)

    def to(self, device: torch.device | str) -> Dataset:
        """This dataset with its tensors on `device` (itself when already there)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return Dataset(
            images=self.images.to(device),
            labels=self.labels.to(device),
            targets={k: v.to(device) for k, v in self.targets.items()},
            meta=self.meta,
            name=self.name,
        )

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> Batch:
        """The Batch of the items at `index`, on `device`: images as float in [0, 1]."""
        index = index.to(self.images.device)
        # Move the uint8 pixels, then convert: a quarter of the bytes of moving floats.
        images = self.images[index].to(device).float().div_(255.0)
        return {
            "image": images,
            "label": self.labels[index].to(device),
            "targets": {k: v[index].to(device) for k, v in self.targets.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the dataset file atomically: a temporary file in the same folder, then a rename."""
        path = Path(path)
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"dataset {self.name!r}: meta must hold only JSON-like values to be loadable: {e}") from e
        # clone() so that a view of a larger tensor does not drag its whole storage into the file.
        payload = {
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
            "targets": {k: v.detach().cpu().clone() for k, v in self.targets.items()},
            "meta": self.meta,
        }
        with atomic_file(path) as f:
            torch.save(payload, f)

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> Dataset:
        """Read a dataset file (tensors, numbers, strings, lists, dicts only); malformed -> ValueError."""
        path = Path(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as e:  # torch reports corrupt or unsafe files with many exception types
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            detail = f"it contains {found.group(1)}, which is not allowed" if found else f"{type(e).__name__}"
            raise ValueError(f"{path}: not a valid dataset file ({detail})") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a valid dataset file (expected a dict, got {type(raw).__name__})")
        missing = [k for k in ("images", "labels", "targets", "meta") if k not in raw]
        if missing:
            raise ValueError(f"{path}: not a valid dataset file (missing {', '.join(missing)})")
        try:
            return cls(raw["images"], raw["labels"], raw["targets"], raw["meta"], name or path.stem)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `path` that replaces `path` only if the block completes without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a dataset is not
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _describe(value: object) -> str:
    """`uint8 [3, 28, 28]` for a tensor, the type name otherwise: for error messages."""
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return type(value).__name__


class BatchStream:
    """Endless random batches from one dataset, epoch-shuffled, reproducible by seed; the data lives on `device` once (uint8), batches are indexed there (no per-step host->device copy).

    The stream is the concatenation of one random permutation per pass, cut into batches: each
    pass visits every item exactly once, and a batch may straddle two passes. `epoch` is the
    0-based pass that the latest batch ended in.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(f"batch_size must be in [1, {len(dataset)}] for dataset {dataset.name!r}, got {batch_size}")
        self.device = torch.device(device)
        self.data = dataset.to(self.device)
        self.batch_size = batch_size
        # Permutations come from a CPU generator so a seed gives the same batches on any device.
        self._gen = torch.Generator().manual_seed(seed)
        self._perm = self._new_perm()
        self._pos = 0
        self.epoch = 0

    def _new_perm(self) -> torch.Tensor:
        return torch.randperm(len(self.data), generator=self._gen).to(self.device)

    def next(self) -> Batch:
        """The next Batch, of exactly `batch_size` items."""
        parts, need = [], self.batch_size
        while need:
            if self._pos == len(self._perm):
                self._perm, self._pos = self._new_perm(), 0
                self.epoch += 1
            part = self._perm[self._pos:self._pos + need]
            self._pos += len(part)
            need -= len(part)
            parts.append(part)
        index = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.data.batch(index, self.device)
