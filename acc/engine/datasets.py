"""The datasets a trainer knows, and generating new ones from the registry's generators.

`DatasetCatalog` lists MNIST and every `<name>.pt` in the workspace's data folders, joined with
the store's rows (which also remember generations that are running or failed). `generate` runs a
generator in chunks, with progress and cancellation between chunks, checks what the user code
returned, and writes the file atomically: a generator that raises or returns garbage leaves no
file, only a failed row with its error. `start_generation` does the same as a background job
that does not own the engine, so training goes on meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from acc.catalog import BUILTIN_NAMES, check_dataset_name, dataset_path, known_datasets, load_dataset
from acc.datasets import Dataset
from acc.engine.errors import error_text
from acc.engine.events import Subscribers
from acc.engine.jobs import Cancelled, Job, JobManager
from acc.generators.base import Generator
from acc.registry import Registry
from acc.store import Store
from acc.workspace import Workspace

CHUNK = 500  # images per generate() call: progress and cancellation happen between chunks
MAX_IMAGES = 1_000_000
CACHED = 4  # datasets kept in memory for pictures and histograms


class DatasetExists(ValueError):
    """The name is taken by a dataset on disk or by a generation still running."""


class DatasetInUse(ValueError):
    """A task trains on it: remove the task first."""


def validate_params(cls: type[Generator], params: dict | None) -> BaseModel:
    """The generator's `Params` from user input; ValueError with every problem on one line.
    Unknown names are refused even when `Params` (a plain BaseModel) would ignore them: a typo
    must not silently generate with the default."""
    unknown = sorted(set(params or {}) - set(cls.Params.model_fields))
    if unknown:
        raise ValueError(f"bad parameters for {cls.__name__}: unknown {', '.join(unknown)}; "
                         f"it takes: {', '.join(cls.Params.model_fields) or 'none'}")
    try:  # strict: `true` is no number, whatever the user's Params says (the API's rule)
        return cls.Params.model_validate(params or {}, strict=True)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"bad parameters for {cls.__name__}: {problems}") from None


def _checked_output(result: Any, n: int, who: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """What a generator returned, checked: images uint8 [n,28,28], targets {name: float32 [n]}, labels."""
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise TypeError(f"{who}.generate must return (images, targets) or (images, targets, labels), "
                        f"got {type(result).__name__}")
    images, targets = np.asarray(result[0]), result[1]
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dtype != np.uint8 or images.shape != (n, 28, 28):
        raise ValueError(f"{who}.generate({n}) returned images {images.dtype} {list(images.shape)}; "
                         f"expected uint8 [{n}, 28, 28]")
    if not isinstance(targets, dict):
        raise TypeError(f"{who}.generate must return targets as a dict {{name: array}}, got {type(targets).__name__}")
    checked = {}
    for key, value in targets.items():
        value = np.asarray(value, dtype=np.float32)
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{who}: target name {key!r} must be an identifier")
        if value.shape != (n,) or not np.isfinite(value).all():
            raise ValueError(f"{who}: target {key!r} must be {n} finite numbers, got shape {list(value.shape)}"
                             + ("" if value.shape != (n,) else " with non-finite values"))
        checked[key] = value
    labels = np.full(n, -1, dtype=np.int64) if len(result) == 2 else np.asarray(result[2]).astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"{who}: labels must be {n} integers, got shape {list(labels.shape)}")
    return images, checked, labels


class DatasetCatalog:
    def __init__(self, workspace: Workspace, store: Store, generators: Registry) -> None:
        self.workspace, self.store, self.generators = workspace, store, generators
        self._cache: OrderedDict[tuple[str, float], Dataset] = OrderedDict()
        self._described: dict[str, tuple[tuple, dict]] = {}  # name -> ((path, mtime), description)
        self._generating: set[str] = set()
        self._lock = threading.Lock()
        self._subscribers: Subscribers[dict] = Subscribers()
        for row in store.datasets():  # a trainer killed mid-generation: say so instead of "generating" forever
            if row["status"] == "generating":
                store.put_dataset(**_row_args(row, status="failed", error="interrupted: the trainer stopped"))

    def subscribe(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        """`callback({"name", "status"})` when a dataset starts generating, is ready, failed,
        cancelled or deleted (status "deleted"), on the thread that did it."""
        return self._subscribers.add(callback)

    def _put(self, row: dict, status: str, **fields: Any) -> None:
        self.store.put_dataset(**row, status=status, **fields)
        self._subscribers.publish({"name": row["name"], "status": status})

    # ---- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Built-in first: mnist, mnist_test, then the generated ones by name."""
        return known_datasets(self.workspace.data_dirs)

    def path_of(self, name: str) -> Path | None:
        return dataset_path(name, self.workspace.data_dirs)

    def load(self, name: str) -> Dataset:
        """The dataset, from a small cache keyed by file and modification time."""
        check_dataset_name(name)
        path = self.path_of(name)
        key = (str(path) if path else name, path.stat().st_mtime if path else 0.0)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        dataset = load_dataset(name, self.workspace.data_dirs, self.workspace.mnist_dir)
        with self._lock:
            self._cache[key] = dataset
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
        return dataset

    def list(self) -> list[dict]:
        """Every dataset: on disk (ready), being generated, or whose generation failed."""
        rows, names = {row["name"]: row for row in self.store.datasets()}, self.names()
        return [self.describe(name, rows.get(name)) for name in names] + \
            [self._from_row(row) for name, row in rows.items() if name not in names]

    def describe(self, name: str, row: dict | None = None) -> dict:
        """Name, size, status, generator, params, seed, targets and class counts; KeyError if unknown."""
        check_dataset_name(name)
        if name not in BUILTIN_NAMES and self.path_of(name) is None:
            row = row or self.store.dataset(name)
            if row is None:
                raise KeyError(f"unknown dataset {name!r}; available: {', '.join(self.names())}")
            return self._from_row(row)
        path = self.path_of(name)
        stamp = (str(path), path.stat().st_mtime if path else 0.0)
        if self._described.get(name, (None,))[0] != stamp:  # a listing must not load every file every time
            data = self.load(name)
            meta = data.meta
            self._described[name] = stamp, {
                "name": name, "n": len(data), "status": "ready", "builtin": name in BUILTIN_NAMES,
                "generator": meta.get("generator") or ("MNIST" if name in BUILTIN_NAMES else None),
                "params": meta.get("params", {}), "seed": meta.get("seed"), "created": meta.get("created"),
                "targets": list(data.targets), "classes": data.class_counts(),
                "ranges": {k: [float(v.min()), float(v.max())] for k, v in data.targets.items() if len(v)},
                "error": None, "job": None}
        return dict(self._described[name][1])

    def _from_row(self, row: dict) -> dict:
        return {"name": row["name"], "n": row["n"], "status": row["status"], "builtin": False,
                "generator": row["generator"], "params": row["params"], "seed": row["seed"],
                "created": row["created"], "targets": [], "classes": [], "ranges": {}, "error": row["error"],
                "job": row["info"].get("job")}

    # ---- changing ------------------------------------------------------------------------------
    def delete(self, name: str, in_use: set[str]) -> None:
        """Delete a generated dataset's file and row. MNIST and datasets tasks train on are refused."""
        check_dataset_name(name)
        if name in BUILTIN_NAMES:
            raise ValueError(f"{name!r} is built in and cannot be deleted")
        if name in in_use:
            raise DatasetInUse(f"dataset {name!r} is used by a task; remove the task first")
        with self._lock:
            if name in self._generating:
                raise DatasetExists(f"dataset {name!r} is being generated; cancel its job first")
        path, row = self.path_of(name), self.store.dataset(name)
        if path is None and row is None:
            raise KeyError(f"unknown dataset {name!r}")
        if path is not None:
            path.unlink()
        self.store.delete_dataset(name)
        self._subscribers.publish({"name": name, "status": "deleted"})

    def check(self, generator: str, name: str, n: int, params: dict | None) -> tuple[type[Generator], BaseModel]:
        """Everything about a request that can be wrong, before any work: name, size, generator, params."""
        check_dataset_name(name)
        if name in BUILTIN_NAMES or self.path_of(name) is not None:
            raise DatasetExists(f"dataset {name!r} already exists; delete it first or pick another name")
        if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
            raise ValueError(f"n must be an integer from 1 to {MAX_IMAGES}, got {n!r}")
        cls = self.generators.get(generator)
        return cls, validate_params(cls, params)

    def generate(self, generator: str, name: str, n: int, seed: int = 0, params: dict | None = None,
                 progress: Callable[[float], None] | None = None, cancel: threading.Event | None = None,
                 job: str | None = None, reserved: bool = False) -> dict:
        """Generate and save `<data_dir>/<name>.pt`; returns its description. Deterministic by seed.
        `reserved`: the caller already holds the name (`reserve`)."""
        if not reserved:
            self.reserve(name)
        try:
            cls, checked = self.check(generator, name, n, params)
            row = _request_row(name, generator, checked, seed, n, job)
            self._put(row, "generating")
            try:
                dataset = self._run(cls, checked, row, progress, cancel)
                path = self.workspace.data_dir / f"{name}.pt"
                dataset.save(path)  # atomic: a temporary file renamed into place
                self._put(row, "ready", path=str(path))
            except Cancelled:
                self._put(row, "cancelled", error="cancelled")
                raise
            except Exception as e:
                self._put(row, "failed", error=error_text(e))
                raise
        finally:
            self.release(name)
        return self.describe(name)

    def ensure(self, generator: str, name: str, n: int, seed: int = 0, params: dict | None = None,
               cancel: threading.Event | None = None) -> dict:
        """The dataset `name` as this request would make it: generated now if missing; ValueError if
        a dataset of that name exists but was made by another generator, size, seed or params."""
        if self.path_of(name) is None:
            return self.generate(generator, name, n, seed, params, cancel=cancel)
        have = self.describe(name)
        cls = self.generators.get(generator)
        want = {"generator": cls.__name__, "n": n, "seed": seed,
                "params": validate_params(cls, params).model_dump(mode="json")}
        differs = [key for key, value in want.items() if have[key] != value]
        if differs:
            raise ValueError(f"dataset {name!r} exists but differs in {', '.join(differs)} "
                             f"(it has {', '.join(f'{k}={have[k]!r}' for k in differs)}); delete it or use another name")
        return have

    def reserve(self, name: str) -> None:
        """Claim `name` for a generation, so that two requests cannot race for it."""
        check_dataset_name(name)
        with self._lock:
            if name in self._generating:
                raise DatasetExists(f"dataset {name!r} is already being generated")
            self._generating.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._generating.discard(name)

    def _run(self, cls: type[Generator], params: BaseModel, row: dict,
             progress: Callable[[float], None] | None, cancel: threading.Event | None) -> Dataset:
        instance = cls(mnist_dir=self.workspace.mnist_dir)
        rng = np.random.default_rng(row["seed"])
        images, targets, labels = [], [], []
        done, n = 0, row["n"]
        while done < n:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"generation of {row['name']!r} cancelled after {done} of {n} images")
            size = min(CHUNK, n - done)
            chunk = _checked_output(instance.generate(size, rng, params), size, cls.__name__)
            if targets and set(chunk[1]) != set(targets[0]):
                raise ValueError(f"{cls.__name__}: targets changed between chunks")
            images.append(chunk[0])
            targets.append(chunk[1])
            labels.append(chunk[2])
            done += size
            if progress is not None:
                progress(done / n)
        meta = {"generator": cls.__name__, "params": row["params"], "seed": row["seed"], "created": time.time()}
        return Dataset(images=torch.from_numpy(np.concatenate(images))[:, None],
                       labels=torch.from_numpy(np.concatenate(labels)),
                       targets={k: torch.from_numpy(np.concatenate([t[k] for t in targets])) for k in targets[0]},
                       meta=meta, name=row["name"])


def _request_row(name: str, generator: str, params: BaseModel, seed: int, n: int, job: str | None) -> dict:
    return {"name": name, "generator": generator, "params": params.model_dump(mode="json"), "seed": seed, "n": n,
            "info": {"job": job}}


def _row_args(row: dict, **changes: Any) -> dict:
    args = {k: row[k] for k in ("name", "generator", "params", "seed", "n", "path", "error", "info")}
    return {**args, **changes}


def start_generation(jobs: JobManager, catalog: DatasetCatalog, generator: str, name: str, n: int,
                     seed: int = 0, params: dict | None = None) -> Job:
    """Generate in a background job (it does not own the engine: training goes on). Bad requests
    raise here, before the job starts."""
    catalog.reserve(name)
    try:
        _, checked = catalog.check(generator, name, n, params)
        catalog._put(_request_row(name, generator, checked, seed, n, None), "generating")  # listed at once

        def work(job: Job) -> dict:
            return catalog.generate(generator, name, n, seed, params, progress=lambda f: jobs.progress(job, f),
                                    cancel=job.cancel, job=job.id, reserved=True)

        return jobs.submit("dataset", name, work)
    except BaseException:
        catalog.release(name)
        raise
