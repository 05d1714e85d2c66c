"""Running a recipe: the context `r` that `Recipe.run` receives, and `run_recipe`.

Operations are recorded and applied lazily, at the latest moment they are needed. That is what
makes a recipe restart-safe: when `r.checkpoint(name)` finds that this version of the recipe
(hash of its file, parameters and seed) already saved `name`, the pending operations are dropped
and the checkpoint is loaded instead, so a recipe run again after a crash continues from the last
checkpoint it had made. The same laziness gives a dry run (`plan_recipe`) that counts the steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from acc.catalog import known_datasets
from acc.engine.datasets import DatasetCatalog
from acc.engine.jobs import Cancelled, Job, JobManager
from acc.engine.trainer import Engine
from acc.recipes.base import Recipe
from acc.registry import Registry

TRAIN_CHUNK = 50  # steps between checks for cancellation and progress reports


@dataclass
class Op:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    where: str = field(default_factory=lambda: _recipe_line())  # the recipe line that asked for it (defined below)


def _recipe_line() -> str:
    """`file:line` of the innermost frame outside this module, contextlib and generated code (the
    dataclass's `__init__`): the recipe's line. Operations are applied later than they are
    recorded, so an error names this line as well."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename in (__file__, contextlib.__file__)
                                 or frame.f_code.co_filename.startswith("<")):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


class RecipeContext:
    """What a recipe script calls. Every method records an operation; see the module docstring."""

    def __init__(self, engine: Engine | None, recipe: str, version: str, *, total_steps: int | None = None,
                 cancel: threading.Event | None = None, datasets: DatasetCatalog | None = None,
                 on_progress: Callable[[int, int | None], None] | None = None) -> None:
        self.engine, self.recipe, self.version = engine, recipe, version  # engine None: dry run
        self.datasets = datasets
        self.total_steps, self.steps_done = total_steps, 0
        self.skipped: list[str] = []  # checkpoints found already made and loaded instead
        self.checkpoints: list[dict] = []
        self.branch = recipe
        self._cancel, self._on_progress = cancel or threading.Event(), on_progress
        self._pending: list[Op] = []

    # ---- the recipe API ----------------------------------------------------------------------
    def model(self, name: str, **config: Any) -> None:
        """Start from a fresh model `build_model({"name": name, **config})` (tasks cleared)."""
        self._pending.append(Op("set_model", {"config": {"name": name, **config}, "run_name": self.branch}))

    def dataset(self, name: str, generator: str | None = None, n: int | None = None, seed: int = 0,
                **params: Any) -> str:
        """The name of a dataset for `add_task(dataset=...)`. With a `generator`, it is generated
        now (`n` images, `seed`, the generator's `params`) unless it already exists; an existing
        one made differently is an error, so that a recipe always trains on what it says."""
        if self.engine is None:
            return name
        if generator is None:
            if name not in known_datasets(self.engine.workspace.data_dirs):
                raise KeyError(f"recipe {self.recipe!r} needs dataset {name!r}, which does not exist; "
                               "generate it first, or pass generator= and n= to r.dataset")
            return name
        if self.datasets is None:
            raise RuntimeError(f"recipe {self.recipe!r} generates dataset {name!r} but runs without a dataset catalog")
        if n is None:
            raise ValueError(f"r.dataset({name!r}, generator={generator!r}) needs n, the number of images")
        self.datasets.ensure(generator, name, n, seed, params, cancel=self._cancel)
        return name

    def add_task(self, type: str, name: str | None = None, **options: Any) -> None:
        self._pending.append(Op("add_task", {"type": type, "name": name, "options": options}))

    def remove_task(self, name: str) -> None:
        self._pending.append(Op("remove_task", {"name": name}))

    def set_weight(self, name: str, weight: float) -> None:
        self._pending.append(Op("update_task", {"name": name, "weight": weight, "enabled": None}))

    def set_lr(self, lr: float) -> None:
        self._pending.append(Op("set_lr", {"lr": lr}))

    def expand(self, where: str, init: str = "identity", seed: int | None = None) -> None:
        """Grow the model by a layer (`Engine.expand`); the engine saves the expanded model as a
        checkpoint of its own, and the recipe's branch goes on from it."""
        self._pending.append(Op("expand", {"where": where, "init": init, "seed": seed}))

    def train(self, steps: int) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"train(steps) needs a positive integer, got {steps!r}")
        self._pending.append(Op("train", {"steps": steps}))

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Evaluate now (this applies everything pending); {} in a dry run."""
        self._apply_pending()
        return {} if self.engine is None else self.engine.evaluate()

    def checkpoint(self, name: str) -> dict:
        """Save (or, when this recipe version already saved `name`, load) a checkpoint."""
        if self.engine is None:
            self._count_pending_steps()
            self._pending.clear()
            return {"id": f"plan:{name}", "name": name}
        existing = self._existing(name)
        if existing is not None:
            self._count_pending_steps()
            self._pending.clear()
            self.engine.load_checkpoint(existing["id"], branch=self.branch)
            self.skipped.append(name)
            row = {key: existing[key] for key in ("id", "name", "parent", "step")}
        else:
            self._apply_pending()
            row = self.engine.save_checkpoint(name, branch=self.branch,
                                              extra={"recipe": {"name": self.recipe, "version": self.version}})
        self.checkpoints.append(row)
        return row

    def load(self, checkpoint: dict | str) -> None:
        """Continue from a checkpoint (a dict from `checkpoint()`, or an id or name)."""
        self._pending = [Op("load_checkpoint", {"id_or_name": _checkpoint_id(checkpoint), "branch": self.branch})]

    @contextmanager
    def fork(self, parent: dict | str, name: str) -> Iterator["RecipeContext"]:
        """A branch from `parent` (its weights, tasks and optimizer state); at the end of the block
        the branch is saved as checkpoint `name`, a child of `parent`."""
        outer = self.branch
        self.branch = name
        self.load(parent)  # the run it starts is named after the branch
        try:
            yield self
            if not (self.checkpoints and self.checkpoints[-1]["name"] == name and not self._pending):
                self.checkpoint(name)
        finally:
            self.branch = outer

    # ---- machinery ---------------------------------------------------------------------------
    def finish(self) -> None:
        """Apply what is still pending when the recipe's `run` returns."""
        self._apply_pending()

    def _existing(self, name: str) -> dict | None:
        for row in reversed(self.engine.store.checkpoints()):
            recipe = row["meta"].get("recipe") or {}
            if row["name"] == name and recipe.get("version") == self.version:
                return row
        return None

    def _count_pending_steps(self) -> None:
        self._progress(sum(op.args["steps"] for op in self._pending if op.kind == "train"))

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        if self.engine is None:
            self._progress(sum(op.args["steps"] for op in pending if op.kind == "train"))
            return
        for op in pending:
            try:
                self._apply(op)
            except Cancelled:
                raise
            except Exception as e:
                e.add_note(f"in recipe {self.recipe}, asked for at {op.where} ({op.kind})")
                raise

    def _apply(self, op: Op) -> None:
        if op.kind != "train":
            self.engine.call(op.kind, **op.args)
            return
        left = op.args["steps"]
        while left:
            if self._cancel.is_set():
                raise Cancelled(f"recipe {self.recipe!r} cancelled at step {self.engine.step}")
            chunk = min(TRAIN_CHUNK, left)
            self.engine.train(chunk)
            left -= chunk
            self._progress(chunk)

    def _progress(self, steps: int) -> None:
        self.steps_done += steps
        if self._on_progress is not None and steps:
            self._on_progress(self.steps_done, self.total_steps)


def _checkpoint_id(checkpoint: dict | str) -> str:
    return checkpoint["id"] if isinstance(checkpoint, dict) else checkpoint


def find_recipe(registry: Registry, name: str) -> type[Recipe]:
    """A recipe class by class name, or by the same name in snake case (`mnist_only_5k`)."""
    if name in registry:
        return registry.get(name)
    folded = name.replace("_", "").lower()
    for candidate, cls in registry.items().items():
        if candidate.lower() == folded:
            return cls
    return registry.get(name)  # raises KeyError listing the known recipes


def recipe_version(cls: type[Recipe], params: dict, seed: int, source_file: str) -> str:
    """Hash of the recipe's file, parameters and seed: checkpoints are reused only by the same."""
    digest = hashlib.sha256(Path(source_file).read_bytes())
    digest.update(json.dumps({"params": params, "seed": seed}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@dataclass
class RecipeResult:
    recipe: str
    version: str
    steps: int
    checkpoints: list[dict]
    skipped: list[str]


def run_recipe(engine: Engine, recipes: Registry, name: str, params: dict | None = None,
               cancel: threading.Event | None = None, datasets: DatasetCatalog | None = None,
               on_progress: Callable[[int, int | None], None] | None = None) -> RecipeResult:
    """Run a recipe on `engine` to the end (raises what the recipe raised, or Cancelled)."""
    cls = find_recipe(recipes, name)
    recipe_name = cls.__name__
    recipe = cls(**(params or {}))
    version = recipe_version(cls, recipe.params.model_dump(mode="json"), engine.config.seed,
                             recipes.file_of(recipe_name))
    plan = RecipeContext(None, recipe_name, version)
    try:
        cls(**(params or {})).run(plan)
        plan.finish()
        total: int | None = plan.steps_done
    except Exception:  # a recipe that reads real results cannot be planned: progress without a total
        total = None
    engine.autosave_before(recipe_name)  # the recipe replaces the live training: keep what is unsaved
    context = RecipeContext(engine, recipe_name, version, total_steps=total, cancel=cancel, datasets=datasets,
                            on_progress=on_progress)
    engine.store.log_event(engine.run_id, "recipe", f"recipe {recipe_name} started", engine.step,
                           {"recipe": recipe_name, "version": version, "total_steps": total})
    recipe.run(context)
    context.finish()
    engine.store.log_event(engine.run_id, "recipe", f"recipe {recipe_name} finished", engine.step,
                           {"recipe": recipe_name, "checkpoints": [c["id"] for c in context.checkpoints],
                            "skipped": context.skipped})
    return RecipeResult(recipe_name, version, context.steps_done, context.checkpoints, context.skipped)


def start_recipe_job(jobs: JobManager, engine: Engine, recipes: Registry, name: str,
                     params: dict | None = None, datasets: DatasetCatalog | None = None) -> Job:
    """Run a recipe as a background job that owns the engine. Unknown recipe: KeyError; bad
    parameters: ValueError; another job driving the engine: JobConflict — all before it starts.
    Training that no checkpoint holds is first saved as "autosave before <recipe>" (`job.autosaved`)."""
    cls = find_recipe(recipes, name)
    try:
        cls.Params.model_validate(params or {}, strict=True)
    except ValidationError as e:
        raise ValueError(f"invalid parameters for recipe {cls.__name__}: {e}") from None

    def work(job: Job) -> dict:
        def progress(done: int, total: int | None) -> None:
            if total:
                jobs.progress(job, done / total)
        return asdict(run_recipe(engine, recipes, cls.__name__, params, cancel=job.cancel, datasets=datasets,
                                 on_progress=progress))

    def autosave(job: Job) -> None:  # before the answer, so that it can say what was kept
        engine.stop()  # live training ends here: no step between this autosave and the recipe's own
        row = engine.autosave_before(cls.__name__)
        job.autosaved = {key: row[key] for key in ("id", "name", "step")} if row else None

    return jobs.submit("recipe", cls.__name__, work, owns_engine=True, prepare=autosave)
