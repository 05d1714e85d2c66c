"""Ranks 1..N-1 of a data-parallel job: an engine that only computes (`Follower`).

Rank 0 (`acc.engine.trainer.Engine`) owns the API, the store and the registry; a follower has none
of them. At every step boundary it takes what rank 0 sends (`acc.engine.data_parallel`): a rebuild
(model, task specs and task source files, weights, Adam's state), a control (status, learning
rate, task weights and switches) or the end of the job, and steps exactly when rank 0 steps, on
batches of its own. Its store is a private one in a temporary folder that the job's metrics never
reach; its datasets come from the job's workspace (on another machine: the same path there).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from acc.engine.checkpoint import CheckpointData, unpack_tensors
from acc.engine.data_parallel import split_blobs
from acc.engine.distributed import Ranks
from acc.engine.trainer import Engine, EngineConfig
from acc.registry import Registry
from acc.store import Store
from acc.tasks.base import Task
from acc.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankWorkspace(Workspace):
    """A follower's own folder (store, locks, shipped task files) that reads the job's datasets."""

    job: Workspace | None = None

    @property
    def data_dir(self) -> Path:
        return self.job.data_dir

    @property
    def mnist_dir(self) -> Path:
        return self.job.mnist_dir


class Follower(Engine):
    """Rank `ranks.rank` > 0: trains what rank 0 says, in step with it; see the module docstring."""

    failure: BaseException | None = None  # what ended this rank's loop, raised by `wait`

    def __init__(self, ranks: Ranks, config: EngineConfig, job: Workspace, folder: Path) -> None:
        workspace = RankWorkspace(folder, job)
        self.shipped = folder / "tasks"  # the task files rank 0 sends, as their source text
        self.shipped.mkdir(parents=True, exist_ok=True)
        registry = Registry("tasks", Task, [self.shipped])
        registry.scan()
        # Rank 0 evaluates and saves; a follower never does either.
        config = replace(config, eval_every=0, autosave_every_s=0.0, eval_device=None, ranks=1)
        super().__init__(workspace, Store(workspace.db_path), registry, config, ranks=ranks)

    def wait(self) -> None:
        """Until rank 0 ends the job (or this rank fails: its error is raised here)."""
        self._thread.join()
        if self.failure is not None:
            raise self.failure

    def _loop(self) -> None:
        try:
            self._share_cores()  # on this thread: OpenMP's thread count is per thread
            while self._follow():
                if self.status == "running" and self._enabled_tasks():
                    self._step()
        except BaseException as e:  # this rank is lost: rank 0 sees its collectives fail and goes on alone
            log.exception("rank %d failed", self.ranks.rank)
            self.failure = e
        finally:
            self.store.close()

    def _follow(self) -> bool:
        """Apply rank 0's messages of this step boundary; False when the job is over."""
        for message in self.ranks.commands():
            kind = message["kind"]
            if kind == "close":
                return False
            if kind == "rebuild":
                self._rebuild(message, self.ranks.broadcast_bytes())
            elif kind == "control":
                self._control_from(message)
            elif kind == "fingerprints":
                self.ranks.gather(self._do_fingerprints())
            else:
                raise ValueError(f"unknown message from rank 0: {kind!r}")
        return True

    def _rebuild(self, message: dict, tensors: bytes) -> None:
        """Become what rank 0 is: its model, tasks, optimizer and step, from its message."""
        for name, source in message["sources"].items():
            path = self.shipped / name
            if not path.exists() or path.read_text() != source:
                path.write_text(source)
        self.registry.scan()
        weights, optimizer = unpack_tensors(*split_blobs(tensors))
        meta = message["meta"]
        self._install(*self._build_from(CheckpointData(meta, weights, optimizer)), step=meta["step"], parent=None)

    def _control_from(self, message: dict) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = message["lr"]
        for name, (weight, enabled) in message["tasks"].items():
            if name in self.tasks:
                self.tasks[name].task.weight, self.tasks[name].enabled = weight, enabled
        self.status = message["status"]

    def _record(self, metrics: dict[str, float]) -> None:
        """Rank 0 records the job's metrics; a follower's are the same losses on other batches."""


def follower_main(rank: int, world: int, address: str, port: int, device: str, config: dict, job_root: str) -> None:
    """A spawned rank's process (acc.engine.launch) and a torchrun rank > 0's (acc.cli)."""
    from acc.engine.launch import join

    ranks = join(rank, world, address, port, device)
    run_follower(ranks, EngineConfig(**{**config, "device": device}), Workspace(Path(job_root)))


def run_follower(ranks: Ranks, config: EngineConfig, job: Workspace) -> None:
    """Follow rank 0 until it ends the job; a failure here is raised, without the parting barrier
    (rank 0 would not be in it): this process ends, and rank 0 sees its collectives fail."""
    with tempfile.TemporaryDirectory(prefix=f"acc-rank{ranks.rank}-") as folder:
        Follower(ranks, config, job, Path(folder)).wait()
    ranks.close()
