"""Pydantic models at the HTTP edge: every request body and response of the API (DESIGN §4).

Request models forbid unknown fields, bound every number and are strict about types (`true` is no
number, `1` no boolean, `"5"` no integer), so bad input is a 422 with a clear `detail` before it
reaches the engine.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from acc.tasks.base import MAX_WEIGHT

# A name of a task, checkpoint, branch, latent group or target: it appears in URL paths, so it needs at
# least one letter or digit (`.` and `..` would be resolved away by every client). The pattern cannot say
# "at most 64" as well (no look-ahead in pydantic's regex engine): fields add `max_length=NAME_MAX`.
TASK_NAME = r"^[_.-]{0,63}[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_MAX = 64
TYPE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
DATASET_NAME = r"^[a-z0-9_-]{1,64}$"
MAX_STEPS = 100_000_000


def _whole_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field of a (strict) request takes `5` and, as JSON Schema has it, `5.0`; not `true`, `"5"` or
# `5.5`. The bounds come before it in `Annotated`, else the JSON schema shows them as "ge"/"le", not
# "minimum"/"maximum" (pydantic 2.14).
WHOLE_FLOAT = BeforeValidator(_whole_float_as_int)
Int = Annotated[int, WHOLE_FLOAT]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


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
    step_ms: float | None = Field(None, description="time its loss() took in the last step, ms")
    slow: bool = Field(False, description="step_ms is over the trainer's limit (slow_task_s)")


class Fingerprints(BaseModel):
    """sha256 (hex) of the model's tensors and of each task head's: equal hashes, equal weights."""
    model: str
    tasks: dict[str, str]
    ranks: list["Fingerprints"] = Field(default_factory=list, description="every rank's, in rank order (one "
                                        "on one device): all equal while data-parallel ranks are in step")


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
    unsaved: bool = Field(False, description="it trained since the last checkpoint was saved or loaded")
    autosaved: Checkpoint | None = Field(None, description="in the answer to a load, fork or new model: the "
                                         "checkpoint that first saved the unsaved training it replaced")


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
    expansion: dict[str, Any] | None = Field(None, description="a checkpoint made by expanding the model: where, "
                                             "init, seed, params_before, params_after, from (the node it grew from), step")
    ufr: float | None = Field(None, description="UFR of its newest factoring report (M5); null before any")
    trained_under: list[dict[str, Any]] = Field(
        default_factory=list, description="the numerics of its steps since its parent, one entry per change: torch, "
                                          "device, ranks, and cpu_model, cpu_capability and threads (CPU) or gpu and cuda; two "
                                          "runs of one seed agree bitwise only under the same")


class ExpansionPoint(BaseModel):
    where: str = Field(..., description="the place, as POST /api/model/expand takes it, e.g. 'encoder:0'")
    kind: str = Field(..., description="what would be inserted there, in words")
    shape: list[int] = Field(..., description="the feature shape the new layer maps to itself")
    params: int = Field(..., description="parameters the new layer adds")
    inits: list[str]


class Layer(BaseModel):
    name: str
    type: str
    shape: list[int] | None = Field(None, description="a layer's output shape (one item); a bare parameter's own shape")
    params: int


class ModelLayers(BaseModel):
    points: list[ExpansionPoint]
    params: int = Field(..., description="the live model's parameter count")
    layers: list[Layer]
    model: dict[str, Any]


class Device(BaseModel):
    name: str = Field(..., description="cpu, cuda:0, ...")
    kind: Literal["cpu", "cuda"]
    description: str
    memory_total: int | None = Field(None, description="bytes")
    memory_used: int | None = Field(None, description="bytes")
    utilization: float | None = Field(None, description="percent; null where it cannot be read")


class Devices(BaseModel):
    devices: list[Device]
    train: str = Field(..., description="the device training runs on")
    eval: str | None = Field(None, description="the device of the evaluation worker; null: evaluations run "
                             "on the training thread")
    mode: Literal["single", "ddp"]
    ranks: int
    eval_worker: dict[str, Any] | None = Field(None, description="alive, restarts")
    train_threads: int | None = Field(None, description="torch threads training uses, fewer while an "
                                      "evaluation worker shares the CPU with it")
    source: str = Field(..., description="where GPU figures come from: nvml, torch (no utilisation), none")


# ---- requests ----------------------------------------------------------------------------------
class TrainRequest(Request):
    action: Literal["start", "pause", "resume", "stop"]
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS), WHOLE_FLOAT] | None = Field(None, description="for start: steps to train (none: until stopped)")


class ExpandRequest(Request):
    where: str = Field(..., max_length=NAME_MAX, description="one of GET /api/model/layers' points")
    init: Literal["identity", "random"] = Field("identity", description="identity: the expanded model computes "
                                                "what the old one did; random: PyTorch's default initialisation")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1), WHOLE_FLOAT] | None = Field(
        None, description="seed of the new layer's initialisation (default: from the trainer's seed)")


class DevicesUpdate(Request):
    train: str | None = Field(None, max_length=NAME_MAX, description="move training there at the next step")
    eval: str | None = Field(None, max_length=NAME_MAX, description="evaluate in a worker process there; "
                             "null (given explicitly) evaluates on the training thread again")
    mode: Literal["single", "ddp"] | None = None
    ranks: Annotated[int, Field(ge=1, le=1024), WHOLE_FLOAT] | None = None


class LearningRate(Request):
    lr: float = Field(..., gt=0, le=10, allow_inf_nan=False, description="for every parameter group")


class TaskCreate(Request):
    type: str = Field(..., pattern=TYPE_NAME, description="a task class name from /api/registry/tasks")
    name: str | None = Field(None, pattern=TASK_NAME, max_length=NAME_MAX)
    weight: float | None = Field(None, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    latent: str | None = Field(None, pattern=TASK_NAME, max_length=NAME_MAX, description="a latent group of the model")
    dataset: str | None = Field(None, pattern=DATASET_NAME)
    isolation: Literal["probe", "slot", "shared"] | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="the task type's own parameters")


class TaskUpdate(Request):
    weight: float | None = Field(None, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    enabled: bool | None = None


class CheckpointCreate(Request):
    name: str | None = Field(None, pattern=TASK_NAME, max_length=NAME_MAX)


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
    autosaved: dict[str, Any] | None = Field(None, description="a recipe's: {id, name, step} of the checkpoint "
                                             "that saved the unsaved training it replaced")
    checkpoint: str | None = Field(None, description="a factoring job's: the id of the checkpoint it evaluates")


class RecipeRun(Request):
    params: dict[str, Any] = Field(default_factory=dict, description="the recipe's own parameters")


class ForkRequest(Request):
    name: str = Field(..., pattern=TASK_NAME, max_length=NAME_MAX, description="name of the new branch")


# ---- datasets ----------------------------------------------------------------------------------
class DatasetCreate(Request):
    generator: str = Field(..., pattern=TYPE_NAME, description="a generator class name from /api/registry/generators")
    name: str = Field(..., pattern=DATASET_NAME, description="the new dataset's name (the file is <name>.pt)")
    n: Int = Field(..., ge=1, le=1_000_000, description="number of images")
    seed: Int = Field(0, ge=0, le=2**32 - 1)
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
