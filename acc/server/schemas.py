"""Pydantic models at the HTTP edge: every request body and response of the API (DESIGN §4).

Request models forbid unknown fields and bound every number, so bad input is a 422 with a clear
`detail` before it reaches the engine.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from acc.tasks.base import MAX_WEIGHT

TASK_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
TYPE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
DATASET_NAME = r"^[a-z0-9_-]{1,64}$"
MAX_STEPS = 100_000_000


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- responses ---------------------------------------------------------------------------------
class Health(BaseModel):
    ok: bool
    version: str


class TaskState(BaseModel):
    name: str
    type: str
    latent: str
    dataset: str
    weight: float
    enabled: bool
    stale: bool
    error: str | None
    last_loss: float | None


class Fingerprints(BaseModel):
    """sha256 (hex) of the model's tensors and of each task head's: equal hashes, equal weights."""
    model: str
    tasks: dict[str, str]


class State(BaseModel):
    status: Literal["idle", "running", "paused"]
    step: int
    run_id: int
    model: dict[str, Any]
    tasks: list[TaskState]
    device: str
    lr: float
    samples_per_s: float
    parent_checkpoint: str | None
    fingerprints: Fingerprints


class RegistryItem(BaseModel):
    name: str
    doc: str
    params: dict[str, Any]
    file: str


class RegistryError(BaseModel):
    file: str
    line: int | None
    message: str


class RegistryListing(BaseModel):
    items: list[RegistryItem]
    errors: list[RegistryError]


class Series(BaseModel):
    step: list[int]
    value: list[float]


class Metrics(BaseModel):
    series: dict[str, Series]


class EvalResult(BaseModel):
    step: int
    time: float
    results: dict[str, dict[str, float]]


class Checkpoint(BaseModel):
    id: str
    name: str
    parent: str | None
    step: int
    branch: str | None  # the branch (fork or run name) the checkpoint was saved on
    metrics: dict[str, float | None]
    created: float
    run_id: int | None
    tasks: list[dict[str, Any]] = Field(default_factory=list, description="task specs: type, name, weight, ...")
    model: dict[str, Any] = Field(default_factory=dict, description="the model's config")


# ---- requests ----------------------------------------------------------------------------------
class TrainRequest(Request):
    action: Literal["start", "pause", "resume", "stop"]
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="for start: steps to train (none: until stopped)")


class LearningRate(Request):
    lr: float = Field(..., gt=0, le=10, allow_inf_nan=False, description="for every parameter group")


class TaskCreate(Request):
    type: str = Field(..., pattern=TYPE_NAME, description="a task class name from /api/registry/tasks")
    name: str | None = Field(None, pattern=TASK_NAME)
    weight: float | None = Field(None, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    latent: str | None = Field(None, pattern=TASK_NAME, description="a latent group of the model")
    dataset: str | None = Field(None, pattern=DATASET_NAME)
    isolation: Literal["probe", "slot", "shared"] | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="the task type's own parameters")


class TaskUpdate(Request):
    weight: float | None = Field(None, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    enabled: bool | None = None


class CheckpointCreate(Request):
    name: str | None = Field(None, pattern=TASK_NAME)


# ---- added with the service --------------------------------------------------------------------
class Error(BaseModel):
    """Every 4xx: what was wrong, for a person to read."""
    detail: str


class Run(BaseModel):
    id: int
    name: str
    created: float
    status: str
    config: dict[str, Any]


class MetricsBatch(BaseModel):
    """The `metrics` stream event: the points logged since the previous one, column-wise;
    `values[key][i]` belongs to `step[i]` (null where that step did not log the key)."""
    step: list[int]
    values: dict[str, list[float | None]]


class RegistryChange(BaseModel):
    """The `registry` stream event: what one scan of a registry's folders changed."""
    kind: Literal["tasks", "generators", "recipes"]
    added: list[str]
    updated: list[str]
    removed: list[str]
    errors: list[RegistryError]
    files: list[str]


# ---- recipes and jobs --------------------------------------------------------------------------
class Job(BaseModel):
    """A background job (a recipe run); also the `job` stream event."""
    id: str
    kind: str
    name: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1)
    error: str | None
    result: dict[str, Any] | None
    created: float
    finished: float | None
    owns_engine: bool


class RecipeRun(Request):
    params: dict[str, Any] = Field(default_factory=dict, description="the recipe's own parameters")


class ForkRequest(Request):
    name: str = Field(..., pattern=TASK_NAME, description="name of the new branch")


# ---- datasets ----------------------------------------------------------------------------------
class DatasetCreate(Request):
    generator: str = Field(..., pattern=TYPE_NAME, description="a generator class name from /api/registry/generators")
    name: str = Field(..., pattern=DATASET_NAME, description="the new dataset's name (the file is <name>.pt)")
    n: int = Field(..., ge=1, le=1_000_000, description="number of images")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    params: dict[str, Any] = Field(default_factory=dict, description="the generator's own parameters")


class DatasetInfo(BaseModel):
    name: str
    n: int
    status: Literal["ready", "generating", "failed", "cancelled"]
    builtin: bool
    generator: str | None
    params: dict[str, Any]
    seed: int | None
    created: float | None
    targets: list[str] = Field(description="names of the float targets each image carries")
    classes: list[int] = Field(description="images per digit class 0..9 (empty while not ready, or when the "
                                           "images have no labels)")
    ranges: dict[str, list[float]] = Field(default_factory=dict, description="[min, max] of each target: pass "
                                           "a range covering two datasets to /histograms to bin them alike")
    error: str | None
    job: str | None = Field(description="the job generating it")


class Histogram(BaseModel):
    edges: list[float] = Field(description="bins + 1 bin edges")
    counts: list[int]
    mean: float
    std: float
    min: float
    max: float


class Histograms(BaseModel):
    n: int
    targets: dict[str, Histogram]
    classes: list[int] = Field(description="images per digit class 0..9 (empty when the images have no labels)")
