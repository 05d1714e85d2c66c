"""The `/api/datasets` routes (DESIGN §4): list, generate (a background job), describe, delete,
a sample grid and per-target histograms.

Generation does not own the engine, so it is allowed while a recipe runs and training goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from acc.engine.datasets import DatasetExists, DatasetInUse, start_generation
from acc.server.images import captioned_grid_png
from acc.server.routes import SessionDep, engine_errors
from acc.server.schemas import DATASET_NAME, NAME_MAX, TASK_NAME, DatasetCreate, DatasetInfo, Error, Histogram, Histograms, Job

router = APIRouter(prefix="/api/datasets", tags=["datasets"],
                   responses={"4XX": {"model": Error, "description": "Refused; nothing changed"}})

DatasetName = Annotated[str, Path(pattern=DATASET_NAME)]
FLOAT32_MAX = float(np.finfo(np.float32).max)  # targets are float32: a range beyond it bins nothing


@contextmanager
def dataset_errors() -> Iterator[None]:
    with engine_errors():
        try:
            yield
        except (DatasetExists, DatasetInUse) as e:  # before engine_errors makes them a 422
            raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None


@router.get("", response_model=list[DatasetInfo])
def list_datasets(session: SessionDep) -> list[DatasetInfo]:
    """MNIST, every generated dataset, and generations running or failed."""
    return [DatasetInfo(**d) for d in session.datasets.list()]


@router.post("", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def generate(body: DatasetCreate, session: SessionDep) -> Job:
    """Generate a dataset in a background job (progress on the stream, `GET /api/jobs/{id}`).
    404: unknown generator; 409: the name is taken; 422: bad parameters for the generator."""
    with dataset_errors():
        job = start_generation(session.jobs, session.datasets, body.generator, body.name, body.n, body.seed,
                               body.params)
    return Job(**job.public())


@router.get("/{name}", response_model=DatasetInfo)
def describe(name: DatasetName, session: SessionDep) -> DatasetInfo:
    with dataset_errors():
        return DatasetInfo(**session.datasets.describe(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete(name: DatasetName, session: SessionDep) -> None:
    """Delete a generated dataset (409 while a task trains on it or it is being generated)."""
    in_use = {task["dataset"] for task in session.engine.state()["tasks"]}
    with dataset_errors():
        session.datasets.delete(name, in_use)


@router.get("/{name}/grid.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "PNG"}})
def grid(name: DatasetName, session: SessionDep,
         n: Annotated[int, Query(ge=1, le=256, description="images shown")] = 64,
         columns: Annotated[int, Query(ge=1, le=32)] = 8,
         seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="which random sample")] = 0,
         target: Annotated[str | None, Query(pattern=TASK_NAME, max_length=NAME_MAX,
                                             description="caption (default: the first)")] = None,
         sort: Annotated[bool, Query(description="order by the target's value")] = False) -> Response:
    """A random sample of the dataset's images, each captioned with its digit class and target value."""
    with dataset_errors():
        data = session.datasets.load(name)
        if target is not None and target not in data.targets:
            raise KeyError(f"dataset {name!r} has no target {target!r}; it has: {', '.join(data.targets) or 'none'}")
    target = target or next(iter(data.targets), None)
    pick = np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False)
    if sort and target is not None:
        pick = pick[np.argsort(data.targets[target][pick].numpy(), kind="stable")]
    captions = []
    for i in pick:
        label = int(data.labels[i])
        parts = ([str(label)] if label >= 0 else []) + ([f"{float(data.targets[target][i]):.2f}"] if target else [])
        captions.append(" · ".join(parts))
    png = captioned_grid_png(data.images[pick], captions, columns=min(columns, len(pick)))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/{name}/histograms", response_model=Histograms)
def histograms(name: DatasetName, session: SessionDep,
               bins: Annotated[int, Query(ge=1, le=200)] = 30,
               target: Annotated[str | None, Query(pattern=TASK_NAME, max_length=NAME_MAX,
                                                   description="only this target")] = None,
               lo: Annotated[float | None, Query(ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False,
                                                 description="range start (default: min)")] = None,
               hi: Annotated[float | None, Query(ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False,
                                                 description="range end (default: max)")] = None,
               ) -> Histograms:
    """Per-target histograms and the class distribution. Pass the same `lo`, `hi` and `bins` for two
    datasets to overlay them."""
    with dataset_errors():
        data = session.datasets.load(name)
        if target is not None and target not in data.targets:
            raise KeyError(f"dataset {name!r} has no target {target!r}; it has: {', '.join(data.targets) or 'none'}")
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"lo ({lo}) must be below hi ({hi})")
        values = {key: v.double().numpy() for key, v in data.targets.items() if target in (None, key)}
        ranges = {key: bin_range(key, v, lo, hi, bins) for key, v in values.items()}  # all checked, then binned
    out = {}
    for key, v in values.items():
        counts, edges = np.histogram(v, bins=bins, range=ranges[key])
        out[key] = Histogram(edges=edges.tolist(), counts=counts.tolist(), mean=float(v.mean()),
                             std=float(v.std()), min=float(v.min()), max=float(v.max()))
    return Histograms(n=len(data), targets=out, classes=data.class_counts())


def bin_range(key: str, values: np.ndarray, lo: float | None, hi: float | None, bins: int) -> tuple[float, float]:
    """The range `np.histogram` bins target `key` over: [lo, hi], each defaulting to the values' min or
    max. A range that is empty (lo given alone above the largest value, hi alone below the
    smallest) is a ValueError; one too narrow for `bins` distinct edges at its magnitude (a constant
    target, a huge lo) is widened just enough, as a constant target is."""
    low = float(values.min()) if lo is None else lo
    high = float(values.max()) if hi is None else hi
    if low > high:  # only one end was given: both given out of order is refused before
        given, default = (f"lo ({lo})", f"its largest value ({high:g})") if lo is not None else \
                         (f"hi ({hi})", f"its smallest value ({low:g})")
        raise ValueError(f"{given} leaves no range for target {key!r}: the other end defaults to {default}; "
                         "pass both lo and hi")
    # Edges must differ in float64: a width of a few units in the last place per bin, or 1e-9.
    narrowest = max(1e-9, 4 * bins * float(np.spacing(max(abs(low), abs(high)))))
    return low, max(high, low + narrowest)
