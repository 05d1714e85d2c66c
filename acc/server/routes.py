"""The `/api` routes (DESIGN §4): thin translations between HTTP and the session's engine, store
and registries.

Routes that wait for the engine are plain `def`s: FastAPI runs them in its threadpool, so a
command queued behind a training step never blocks the event loop. The engine applies a command
whole or not at all, so turning its refusals into 4xx keeps the promise that a 4xx changes
nothing: a `KeyError` is a 404 for a name in the path and a 422 for a name in the body, a
`ValueError`/`TypeError` a 422, and an engine that does not answer in time a 503.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent

import acc
from acc.engine import DuplicateTaskError, Engine, EngineClosed
from acc.engine import TaskState as EngineTaskState
from acc.engine.jobs import JobConflict
from acc.engine.recipes import start_recipe_job
from acc.store.lineage import lineage_metrics, run_lineage, segments_metrics
from acc.engine.session import Session
from acc.server.images import grid_png
from acc.server.schemas import (NAME_MAX, TASK_NAME, Checkpoint, CheckpointCreate, Error, EvalResult, Fingerprints, ForkRequest,
                                Health, Job,
                                LearningRate, Metrics, RecipeRun, RegistryListing, Run, State, TaskCreate, TaskState, TaskUpdate,
                                TrainRequest)
from acc.server.stream import Broadcaster

MAX_STEP = 1 << 62  # SQLite integers are 64-bit; the store's own "no limit"
# Options every task has get their own TaskCreate fields; `params` is for the task type's own.
COMMON_OPTIONS = frozenset({"type", "name", "latent", "dataset", "weight", "out_dim", "isolation"})

router = APIRouter(prefix="/api", responses={"4XX": {"model": Error, "description": "Refused; nothing changed"}})


def get_session(request: Request) -> Session:
    return request.app.state.session


SessionDep = Annotated[Session, Depends(get_session)]
NameInPath = Annotated[str, Path(pattern=TASK_NAME, max_length=NAME_MAX)]


def _message(e: BaseException) -> str:
    return e.args[0] if e.args and isinstance(e.args[0], str) else str(e)


@contextmanager
def engine_errors(missing: int = status.HTTP_404_NOT_FOUND,
                  invalid: int = status.HTTP_422_UNPROCESSABLE_CONTENT) -> Iterator[None]:
    """Refusals of the engine (or store, or registry) as HTTP errors with their own message."""
    try:
        yield
    except (DuplicateTaskError, JobConflict) as e:
        raise HTTPException(status.HTTP_409_CONFLICT, _message(e)) from None
    except KeyError as e:
        raise HTTPException(missing, _message(e)) from None
    except (ValueError, TypeError) as e:
        raise HTTPException(invalid, _message(e)) from None
    except TimeoutError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the engine did not answer in time; the command may still be applied") from None
    except EngineClosed as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{_message(e)}: the trainer is shutting down") from None


def no_job_driving(session: SessionDep) -> None:
    """Manual edits wait for a recipe that drives the engine, rather than interleave with it."""
    owner = session.jobs.engine_owner()
    if owner is not None:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"{owner.kind} {owner.name!r} (job {owner.id}) is driving the engine; "
                            "cancel the job or wait for it to finish before changing the training by hand")


Manual = [Depends(no_job_driving)]


def full_state(engine: Engine) -> State:
    """The engine's state, read without waiting for the training thread (a step may take long)."""
    return State(**engine.state())


def replaced_state(session: Session, result: dict) -> State:
    """The state after a load, fork or new model, naming the autosave of what it replaced."""
    autosaved = result.get("autosaved")
    row = session.store.checkpoint(autosaved["id"]) if autosaved else None
    return State(**session.engine.state(),
                 autosaved=_checkpoint(row, _run_names(session)) if row is not None else None)


def _task_state(state: EngineTaskState) -> TaskState:
    return TaskState(**asdict(state))


def _checkpoint(row: dict, run_names: dict[int, str], ufr: float | None = None) -> Checkpoint:
    """The API's view of a store row; the branch is the meta's, else (older checkpoints) the run's name."""
    meta = row["meta"]
    return Checkpoint(id=row["id"], name=row["name"], parent=row["parent"], step=row["step"],
                      branch=meta.get("branch") or run_names.get(row["run_id"]), metrics=meta.get("metrics", {}),
                      created=row["created"], run_id=row["run_id"], tasks=meta.get("tasks", []),
                      model=meta.get("model", {}), expansion=meta.get("expansion"), ufr=ufr,
                      trained_under=meta.get("trained_under", []))


def _run_names(session: Session) -> dict[int, str]:
    return {run["id"]: run["name"] for run in session.store.runs()}


def _run_id(session: Session, run: int | None) -> int:
    """The run asked for (404 if there is none), else the engine's current run."""
    if run is None:
        return session.engine.run_id
    if session.store.run(run) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run with id {run}")
    return run


# ---- state and training ------------------------------------------------------------------------
@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health(ok=True, version=acc.__version__)


@router.get("/state", response_model=State)
def get_state(session: SessionDep) -> State:
    with engine_errors():
        return full_state(session.engine)


@router.get("/fingerprints", response_model=Fingerprints)
def fingerprints(session: SessionDep) -> Fingerprints:
    """sha256 of the model's and each task head's tensors, taken between two steps: this one waits
    for the current step (GET /api/state never does); `ranks`: every rank's."""
    with engine_errors():
        ranks = session.engine.rank_fingerprints()
        return Fingerprints(**ranks[0], ranks=[Fingerprints(**r) for r in ranks])


@router.post("/train", response_model=State, dependencies=Manual)
def train(body: TrainRequest, session: SessionDep) -> State:
    """start (for `steps` more steps, or until stopped), pause, resume or stop training."""
    if body.steps is not None and body.action != "start":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"steps is only for start, not {body.action}")
    engine = session.engine
    with engine_errors():
        if body.action == "start":
            engine.start(body.steps)
        else:
            getattr(engine, body.action)()
        return full_state(engine)


@router.put("/lr", response_model=State, dependencies=Manual)
def set_lr(body: LearningRate, session: SessionDep) -> State:
    """Set the learning rate, applied between two steps."""
    with engine_errors():
        session.engine.set_lr(body.lr)
        return full_state(session.engine)


@router.get("/registry/{kind}", response_model=RegistryListing)
def registry(kind: Literal["tasks", "generators", "recipes"], session: SessionDep) -> RegistryListing:
    source = getattr(session, kind)
    return RegistryListing(items=source.describe(), errors=[asdict(e) for e in source.errors])


# ---- tasks -------------------------------------------------------------------------------------
@router.post("/tasks", response_model=TaskState, status_code=status.HTTP_201_CREATED, dependencies=Manual)
def add_task(body: TaskCreate, session: SessionDep) -> TaskState:
    clash = sorted(COMMON_OPTIONS & set(body.params))
    if clash:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"params may not set {', '.join(clash)}: params are the task type's own, not these")
    options = body.model_dump(exclude_none=True, exclude={"type", "name", "params"})
    with engine_errors(missing=status.HTTP_422_UNPROCESSABLE_CONTENT):
        return _task_state(session.engine.add_task(body.type, body.name, **options, **body.params))


@router.patch("/tasks/{name}", response_model=TaskState, dependencies=Manual)
def update_task(name: NameInPath, body: TaskUpdate, session: SessionDep) -> TaskState:
    with engine_errors():
        return _task_state(session.engine.update_task(name, weight=body.weight, enabled=body.enabled))


@router.delete("/tasks/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=Manual)
def remove_task(name: NameInPath, session: SessionDep) -> None:
    with engine_errors():
        session.engine.remove_task(name)


# ---- history -----------------------------------------------------------------------------------
@router.get("/metrics", response_model=Metrics)
def metrics(
    session: SessionDep,
    keys: Annotated[str | None, Query(max_length=10_000, description="comma-separated keys; all when absent")] = None,
    since: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="first step (inclusive)")] = None,
    until: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="last step (inclusive)")] = None,
    max_points: Annotated[int, Query(ge=3, le=20_000, description="per series, downsampled beyond")] = 2000,
    run: Annotated[int | None, Query(ge=1, le=MAX_STEP, description="a run id; the current run when absent")] = None,
    ancestors: Annotated[bool, Query(description="a run started from a checkpoint (a load or a fork): begin with "
                                                 "the curves that led to that checkpoint")] = False,
) -> Response:
    wanted = [key for key in keys.split(",") if key] if keys else []
    run_id = _run_id(session, run)
    with engine_errors():
        session.store.flush()  # read all the engine has logged so far, not just what the writer committed
        if ancestors:
            series = segments_metrics(session.store, run_lineage(session.store, run_id), wanted or None, since,
                                      until, max_points)
        else:
            series = session.store.query_metrics(run_id, wanted or None, since, until, max_points)
    # pydantic's own JSON encoder: FastAPI's generic one costs most of the time on long series
    return Response(Metrics(series=series).model_dump_json(), media_type="application/json")


@router.get("/runs", response_model=list[Run])
def runs(session: SessionDep) -> list[Run]:
    """Every run in the workspace, newest first: a run is one stretch of training of one model."""
    return [Run(**run) for run in session.store.runs()]


@router.post("/eval", response_model=EvalResult)
def evaluate(session: SessionDep) -> EvalResult:
    """Evaluate every enabled task on its validation data now."""
    engine = session.engine
    with engine_errors():
        done = engine.evaluation()  # the step it evaluated: with an eval worker, its snapshot's
        return EvalResult(step=done["step"], time=time.time(), results=done["results"])


@router.get("/evals", response_model=list[EvalResult])
def evals(session: SessionDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
          run: Annotated[int | None, Query(ge=1, le=MAX_STEP)] = None) -> list[EvalResult]:
    """Past evaluations of a run (the current one by default), newest first."""
    run_id = _run_id(session, run)
    with engine_errors():
        session.store.flush()
        return [EvalResult(**row) for row in session.store.evals(run_id, limit)]


@router.get("/images/reconstructions.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "inputs over reconstructions"}})
def reconstructions(session: SessionDep, n: Annotated[int, Query(ge=1, le=64)] = 8) -> Response:
    """The first `n` MNIST validation digits (top row) and the model's reconstructions (bottom)."""
    with engine_errors():
        images, recon = session.engine.reconstructions(n)
    return Response(grid_png([images, recon]), media_type="image/png")


# ---- checkpoints -------------------------------------------------------------------------------
@router.get("/checkpoints", response_model=list[Checkpoint])
def checkpoints(session: SessionDep) -> list[Checkpoint]:
    """Every checkpoint of the workspace, oldest first; `parent` links make the tree."""
    run_names, ufrs = _run_names(session), session.store.newest_ufrs()
    return [_checkpoint(row, run_names, ufrs.get(row["id"])) for row in session.store.checkpoints()]


@router.get("/checkpoints/{id}/metrics", response_model=Metrics)
def checkpoint_metrics(
    id: NameInPath,
    session: SessionDep,
    keys: Annotated[str | None, Query(max_length=10_000, description="comma-separated keys; all when absent")] = None,
    max_points: Annotated[int, Query(ge=3, le=20_000, description="per series, downsampled beyond")] = 2000,
) -> Response:
    """The curves that led to a checkpoint, from the root of its tree: its own run after its
    parent's step, the parent's run before that, and so on (see `acc.store.lineage`)."""
    wanted = [key for key in keys.split(",") if key] if keys else None
    session.store.flush()
    try:
        series = lineage_metrics(session.store, id, wanted, max_points)
    except KeyError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, e.args[0]) from None
    return Response(Metrics(series=series).model_dump_json(), media_type="application/json")


@router.post("/checkpoints", response_model=Checkpoint, status_code=status.HTTP_201_CREATED, dependencies=Manual)
def save_checkpoint(body: CheckpointCreate, session: SessionDep) -> Checkpoint:
    with engine_errors():
        saved = session.engine.save_checkpoint(body.name)
    return _checkpoint(session.store.checkpoint(saved["id"]), _run_names(session))


@router.delete("/checkpoints/{id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=Manual)
def delete_checkpoint(id: NameInPath, session: SessionDep) -> None:
    """Delete a leaf of the tree: 409 for a checkpoint with children or the one the trainer
    continues from."""
    with engine_errors(invalid=status.HTTP_409_CONFLICT):
        session.engine.delete_checkpoint(id)


@router.post("/checkpoints/{id}/load", response_model=State, dependencies=Manual)
def load_checkpoint(id: NameInPath, session: SessionDep) -> State:
    """Replace the model, tasks and optimizer by a checkpoint's (by id, or newest of that name);
    training continues from it in a new run. Unsaved training is first saved as checkpoint
    "autosave before load <name>" (`autosaved` in the answer)."""
    with engine_errors(invalid=status.HTTP_409_CONFLICT):  # e.g. its task type is not registered now, or corrupted
        return replaced_state(session, session.engine.load_checkpoint(id))


@router.post("/checkpoints/{id}/fork", response_model=State, dependencies=Manual)
def fork_checkpoint(id: NameInPath, body: ForkRequest, session: SessionDep) -> State:
    """Load a checkpoint as the start of a new branch `name`: checkpoints saved from here on are
    its children on that branch, and the checkpoint itself stays as it was."""
    with engine_errors(invalid=status.HTTP_409_CONFLICT):
        return replaced_state(session, session.engine.load_checkpoint(id, branch=body.name))


# ---- recipes and jobs --------------------------------------------------------------------------
@router.post("/recipes/{name}/run", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def run_recipe(name: NameInPath, body: RecipeRun, session: SessionDep) -> Job:
    """Run a recipe as a job that drives the engine (manual edits are refused meanwhile);
    checkpoints this version of the recipe already made are reused."""
    with engine_errors():
        job = start_recipe_job(session.jobs, session.engine, session.recipes, name, body.params, session.datasets)
    return Job(**job.public())


@router.get("/jobs", response_model=list[Job])
def jobs(session: SessionDep) -> list[Job]:
    return [Job(**job.public()) for job in session.jobs.list()]


@router.get("/jobs/{id}", response_model=Job)
def job(id: NameInPath, session: SessionDep) -> Job:
    with engine_errors():
        return Job(**session.jobs.get(id).public())


@router.post("/jobs/{id}/cancel", response_model=Job)
def cancel_job(id: NameInPath, session: SessionDep) -> Job:
    """Ask a job to stop (a recipe stops within its current chunk of steps; what it saved stays)."""
    with engine_errors():
        return Job(**session.jobs.cancel(id).public())


# ---- the event stream --------------------------------------------------------------------------
@router.get("/stream", response_class=EventSourceResponse, responses={"4XX": {  # JSON, not events
    "description": "Refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}})
async def stream(request: Request, session: SessionDep) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events, JSON data: `hello` (the State) first, then `metrics` (a MetricsBatch, at
    most every 200 ms), `state` ({kind, message, step, data}: status, task_added/removed/updated/
    stale, lr, checkpoint...), `eval` ({step, results}), `error` ({task, message, step}),
    `registry` (a RegistryChange), `job` (a Job, on each status or progress change) and `dataset`
    ({name, status}: generating, ready, failed, cancelled, deleted) and `factoring` ({checkpoint, job,
    status, progress, stage, error} as a factoring evaluation goes). With a token, browsers may pass
    it as `?token=`: EventSource cannot set headers."""
    broadcaster: Broadcaster = request.app.state.broadcaster
    client = broadcaster.connect()  # before reading the state, so nothing in between is missed
    try:
        yield ServerSentEvent(event="hello", data=await run_in_threadpool(full_state, session.engine))
        async for kind, data in client:
            yield ServerSentEvent(event=kind, data=data)
    finally:
        broadcaster.disconnect(client)
