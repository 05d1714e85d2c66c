"""Wiring: a workspace, its store, the three registries, an engine, its jobs, datasets and factoring
evaluations, opened and closed together.

Used by the CLI, the trainer service and tests, so that all of them start the same way. A command
that does not train (`acc eval`, `acc data`) opens no engine: an engine opens a run, and such a
command must not leave an empty run in the workspace's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acc.engine.datasets import DatasetCatalog
from acc.engine.devices import DeviceManager, resolve_device
from acc.engine.distributed import Ranks
from acc.engine.factoring import FactoringService
from acc.engine.jobs import JobManager
from acc.engine.trainer import Engine, EngineConfig
from acc.generators.base import Generator
from acc.recipes.base import Recipe
from acc.registry import Registry
from acc.store import Store
from acc.tasks.base import Task
from acc.workspace import Workspace


@dataclass
class Session:
    workspace: Workspace
    store: Store
    tasks: Registry
    generators: Registry
    recipes: Registry
    engine: Engine | None  # None when opened with engine=False
    jobs: JobManager
    datasets: DatasetCatalog
    factoring: FactoringService
    devices: DeviceManager

    @classmethod
    def open(cls, workspace: str | Path | None = None, config: EngineConfig | None = None,
             watch: bool = True, restore: bool = False, ranks: Ranks | None = None,
             engine: bool = True) -> "Session":
        """Open everything; `watch=False` loads the registries once without a file watcher;
        `restore` continues the workspace's last run from its latest autosave (the trainer does);
        `ranks`: this is rank 0 of a job that torchrun started; `engine=False` opens no engine (no
        run; factoring jobs run in this process, on the configured device)."""
        ws = Workspace.resolve(workspace)
        store = Store(ws.db_path)
        registries = [Registry(kind, base, ws.registry_folders(kind))
                      for kind, base in (("tasks", Task), ("generators", Generator), ("recipes", Recipe))]
        for registry in registries:
            registry.start() if watch else registry.scan()
        jobs = JobManager()
        if engine:
            trainer = Engine(ws, store, registries[0], config, restore=restore, ranks=ranks)
            factoring = FactoringService(ws, store, jobs, str(trainer.device), worker=lambda: trainer.eval_worker)
        else:
            trainer = None
            factoring = FactoringService(ws, store, jobs, str(resolve_device((config or EngineConfig()).device)))
        return cls(ws, store, *registries, trainer, jobs, DatasetCatalog(ws, store, registries[1]), factoring,
                   DeviceManager())

    def close(self) -> None:
        for job in self.jobs.list():  # a running recipe stops at its next chunk of steps
            job.cancel.set()
        if self.engine is not None:
            self.engine.close()
        self.devices.close()
        for registry in (self.tasks, self.generators, self.recipes):
            registry.stop()
        self.store.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
