"""Wiring: a workspace, its store, the three registries, an engine, its jobs, datasets and factoring
evaluations, opened and closed together.

Used by the CLI, the trainer service and tests, so that all of them start the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acc.engine.datasets import DatasetCatalog
from acc.engine.devices import DeviceManager
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
    engine: Engine
    jobs: JobManager
    datasets: DatasetCatalog
    factoring: FactoringService
    devices: DeviceManager

    @classmethod
    def open(cls, workspace: str | Path | None = None, config: EngineConfig | None = None,
             watch: bool = True, restore: bool = False, ranks: Ranks | None = None) -> "Session":
        """Open everything; `watch=False` loads the registries once without a file watcher;
        `restore` continues the workspace's last run from its latest autosave (the trainer does);
        `ranks`: this is rank 0 of a job that torchrun started."""
        ws = Workspace.resolve(workspace)
        store = Store(ws.db_path)
        registries = [Registry(kind, base, ws.registry_folders(kind))
                      for kind, base in (("tasks", Task), ("generators", Generator), ("recipes", Recipe))]
        for registry in registries:
            registry.start() if watch else registry.scan()
        engine, jobs = Engine(ws, store, registries[0], config, restore=restore, ranks=ranks), JobManager()
        return cls(ws, store, *registries, engine, jobs, DatasetCatalog(ws, store, registries[1]),
                   FactoringService(ws, store, jobs, str(engine.device), worker=lambda: engine.eval_worker),
                   DeviceManager())

    def close(self) -> None:
        for job in self.jobs.list():  # a running recipe stops at its next chunk of steps
            job.cancel.set()
        self.engine.close()
        self.devices.close()
        for registry in (self.tasks, self.generators, self.recipes):
            registry.stop()
        self.store.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
