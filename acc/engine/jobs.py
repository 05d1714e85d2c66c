"""Background jobs (recipe runs, later dataset generation): status, progress, cancel.

A job is a function run on its own thread. At most one job may own the engine at a time (a
recipe drives it); while one does, `engine_owner()` says which, so that the API can refuse manual
edits with a clear message instead of interleaving them with the recipe.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Callable

from acc.engine.errors import error_text
from acc.engine.events import Subscribers

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    kind: str  # "recipe", ...
    name: str
    status: str = "queued"  # queued | running | done | failed | cancelled
    progress: float = 0.0
    error: str | None = None
    result: dict | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    owns_engine: bool = False
    autosaved: dict | None = None  # the checkpoint that saved the training a recipe replaced
    checkpoint: str | None = None  # the checkpoint a factoring job evaluates (names need not be unique)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def public(self) -> dict:
        """The job as JSON-able data (the API's Job)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cancel", "done")}


class Cancelled(Exception):
    """Raised inside a job's work when its `cancel` event was set; what it saved so far stays."""


class JobConflict(RuntimeError):
    """Another job already owns the engine."""


class JobManager:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._subscribers: Subscribers[Job] = Subscribers()

    def subscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        """`callback(job)` on every status or progress change, on the job's thread."""
        return self._subscribers.add(callback)

    def _on_change(self, job: Job) -> None:
        self._subscribers.publish(job)

    def submit(self, kind: str, name: str, work: Callable[[Job], dict | None], owns_engine: bool = False,
               prepare: Callable[[Job], None] | None = None, checkpoint: str | None = None) -> Job:
        """Start `work(job)` on a thread; it may set `job.progress` and should watch `job.cancel`.
        `prepare(job)` runs first, on the caller's thread, once the job holds the engine (if it
        owns it): what it raises is raised here, and the job is dropped."""
        with self._lock:
            owner = self._owner()
            if owns_engine and owner is not None:
                raise JobConflict(f"job {owner.id} ({owner.kind} {owner.name!r}) is driving the engine; "
                                  "cancel it or wait for it to finish")
            job = Job(id=str(next(self._ids)), kind=kind, name=name, owns_engine=owns_engine, checkpoint=checkpoint)
            self._jobs[job.id] = job
        if prepare is not None:
            try:
                prepare(job)
            except BaseException:
                with self._lock:
                    del self._jobs[job.id]
                raise
        threading.Thread(target=self._run, args=(job, work), name=f"acc-job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        if job_id not in self._jobs:
            raise KeyError(f"no job {job_id!r}")
        return self._jobs[job_id]

    def list(self) -> list[Job]:
        return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in ("queued", "running"):
            job.cancel.set()
        return job

    def engine_owner(self) -> Job | None:
        with self._lock:
            return self._owner()

    def progress(self, job: Job, fraction: float) -> None:
        job.progress = min(1.0, max(0.0, fraction))
        self._on_change(job)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (for the CLI and tests)."""
        job = self.get(job_id)
        job.done.wait(timeout)
        return job

    def _owner(self) -> Job | None:
        return next((j for j in self._jobs.values() if j.owns_engine and j.status in ("queued", "running")), None)

    def _run(self, job: Job, work: Callable[[Job], dict | None]) -> None:
        job.status = "running"
        self._on_change(job)
        try:
            job.result = work(job) or {}
            job.status, job.progress = "done", 1.0
        except Cancelled as e:
            job.status, job.error = "cancelled", str(e)
        except Exception as e:  # the job fails, the trainer keeps serving
            log.warning("job %s failed: %s", job.id, error_text(e))
            job.status, job.error = "failed", error_text(e)
        finally:
            job.finished = time.time()
            self._on_change(job)
            job.done.set()
