"""The engine's checkpoint commands: save, load, delete, autosave, and restore after a crash.

A mixin of `Engine` (acc/engine/trainer.py): these run on the engine thread like every command.
Whatever replaces the live training (a load, a fork, a new model, a recipe) first saves training
that no checkpoint holds yet as a node of the tree, "autosave before <what>", so that nothing a
researcher trained is thrown away without a trace. Periodic autosaves (`acc.engine.autosave`) are
kept outside the tree; on start, a trainer continues the last run from the newest of them.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from acc.engine.checkpoint import CheckpointData, new_checkpoint_id, read_checkpoint, write_checkpoint
from acc.engine.runs import OPEN
from acc.engine.task_commands import ActiveTask
from acc.models import build_model


log = logging.getLogger(__name__)


class CheckpointCommands:
    """Save, load, delete, autosave and restore; see the module docstring."""

    # ---- public, thread-safe ---------------------------------------------------------------------
    def save_checkpoint(self, name: str | None = None, branch: str | None = None, extra: dict | None = None) -> dict:
        """Save a checkpoint; `branch` names its line in the tree (default: the run's name),
        `extra` is kept in its meta (recipes record themselves there)."""
        return self.call("save_checkpoint", name=name, branch=branch, extra=extra or {})

    def load_checkpoint(self, id_or_name: str, branch: str | None = None) -> dict:
        """Continue from a checkpoint, in a new run; with `branch`, that run is a fork of that
        name (checkpoints saved from it are the checkpoint's children on that branch). Unsaved
        training is first saved as checkpoint "autosave before load ..." (or "fork ..."); the
        state returned names it under `autosaved`."""
        return self.call("load_checkpoint", id_or_name=id_or_name, branch=branch, autosave=True)

    def autosave_before(self, what: str) -> dict | None:
        """Save unsaved training as checkpoint "autosave before <what>" (before something replaces
        it, e.g. a recipe); returns that checkpoint, or None when nothing was unsaved."""
        return self.call("autosave_before", what=what)

    def delete_checkpoint(self, checkpoint_id: str) -> dict:
        """Delete a leaf of the checkpoint tree (its files and its row). Refused (ValueError) for a
        checkpoint with children, whose curves and branches descend from it, and for the one the
        trainer continues from; KeyError for an unknown id."""
        row = self.call("delete_checkpoint", checkpoint_id=checkpoint_id)
        shutil.rmtree(row["path"], ignore_errors=True)  # here, not on the training thread
        shutil.rmtree(self.workspace.evals_dir / row["id"], ignore_errors=True)  # its factoring figures
        return {"id": row["id"], "name": row["name"]}

    # ---- commands ----------------------------------------------------------------------------
    def _do_save_checkpoint(self, name: str | None, branch: str | None, extra: dict) -> dict:
        checkpoint_id = new_checkpoint_id()
        name = name or f"step-{self.step}"
        weights, optimizer_state, meta = self._snapshot()
        meta.update(name=name, branch=branch or self.store.run(self.run_id)["name"], **extra)
        path = write_checkpoint(self.workspace.checkpoints_dir, checkpoint_id, weights, optimizer_state, meta)
        self.store.add_checkpoint(checkpoint_id, self.run_id, name, self.parent_checkpoint, self.step,
                                  str(path), meta)
        self.parent_checkpoint, self._saved_step = checkpoint_id, self.step
        self.trained_under, self._numerics = [], None  # the next checkpoint lists the steps after this one
        self._reset_streams()
        row = {"id": checkpoint_id, "name": name, "parent": meta["parent"], "step": self.step,
               "branch": meta["branch"], "path": str(path), "metrics": meta["metrics"],
               "trained_under": meta["trained_under"]}
        self._event("checkpoint", f"checkpoint {name!r} saved at step {self.step}", **row)
        return row

    def _do_autosave_before(self, what: str) -> dict | None:
        if self.step == self._saved_step:
            return None
        return self._do_save_checkpoint(f"autosave before {what}", None, {"autosave_before": what})

    def _do_delete_checkpoint(self, checkpoint_id: str) -> dict:
        row = self.store.checkpoint(checkpoint_id)
        if row is None or row["id"] != checkpoint_id:  # by id only: names repeat across branches
            raise KeyError(f"no checkpoint with id {checkpoint_id!r}")
        children = [c["name"] for c in self.store.checkpoints() if c["parent"] == checkpoint_id]
        if children:
            raise ValueError(f"checkpoint {row['name']!r} has {len(children)} child checkpoint(s) "
                             f"({', '.join(children)}); delete those first")
        if checkpoint_id == self.parent_checkpoint:
            raise ValueError(f"the trainer continues from checkpoint {row['name']!r}; "
                             "save or load another one first")
        self.store.delete_checkpoint(checkpoint_id)
        self._event("checkpoint_deleted", f"checkpoint {row['name']!r} deleted", id=checkpoint_id)
        return row  # its files go on the caller's thread

    def _do_load_checkpoint(self, id_or_name: str, branch: str | None = None, autosave: bool = False) -> dict:
        """With `autosave`, unsaved training is saved first (recipes, which save their own
        branches, load without it)."""
        row = self.store.checkpoint(id_or_name)
        if row is None:
            raise KeyError(f"no checkpoint with id or name {id_or_name!r}")
        data = read_checkpoint(row["path"])
        built = self._build_from(data)  # the live state changes only once all of it succeeded
        autosaved = self._do_autosave_before(f"fork {row['name']} as {branch}" if branch else
                                             f"load {row['name']}") if autosave else None
        self._install(*built, step=data.meta["step"], parent=row["id"])
        self._saved_step = self.step
        self.run_id = self._new_run(branch or f"{row['name']}-resumed", from_checkpoint=row["id"])
        self._set_status("idle")
        self._event("checkpoint_loaded", f"checkpoint {row['name']!r} loaded (step {self.step})", id=row["id"])
        return {**self.state(), "autosaved": autosaved}

    # ---- periodic autosaves ------------------------------------------------------------------
    def _autosave(self, wait: bool = False) -> None:
        """Hand a copy of the live state to the autosaver (written on its own thread)."""
        weights, optimizer_state, meta = self._snapshot(copy=True)
        meta.update(name=f"autosave at step {self.step}", branch=self.store.run(self.run_id)["name"])
        if self.autosaver.write(weights, optimizer_state, meta, wait=wait):
            self._event("autosave", f"autosave at step {self.step}", step=self.step)
        elif self.autosaver.last_error:
            self._emit_error(None, self.autosaver.last_error)

    def _restore(self) -> str | None:
        """Continue the last run: from its newest autosave, else from the checkpoint it started
        from. Returns what was loaded, in words, or None for a fresh start (nothing to continue,
        or it could not be read: then the reason is logged and kept in `restore_error`)."""
        point = self._restore_point()
        if point is None:
            return None
        kind, where, run = point
        try:
            if kind == "checkpoint":
                self._do_load_checkpoint(where, branch=run["name"])
                return f"checkpoint {self.store.checkpoint(where)['name']!r} that run {run['id']} started from"
            data = read_checkpoint(where)
            built = self._build_from(data)
        except Exception as e:  # a broken autosave must not keep the trainer from starting
            self.restore_error = f"could not continue run {run['id']} from {where}: {e}"
            log.warning(self.restore_error)
            return None
        parent = data.meta.get("parent")
        parent_row = self.store.checkpoint(parent) if parent else None
        self._install(*built, step=data.meta["step"], parent=parent_row["id"] if parent_row else None)
        self._saved_step = parent_row["step"] if parent_row else 0
        self.run_id = self._new_run(run["name"], continues={"run_id": run["id"], "step": self.step,
                                                            "autosave": str(where)},
                                    **({"from_checkpoint": parent_row["id"]} if parent_row else {}))
        self._event("restored", f"continued run {run['id']} from its autosave at step {self.step}",
                    run=run["id"], autosave=str(where))
        return f"autosave of run {run['id']} ({run['name']}) at step {self.step}"

    def _restore_point(self) -> tuple[str, Any, dict] | None:
        """(kind, checkpoint id or autosave path, run) to continue from, newest run first. Runs
        another live trainer holds are not ours; empty runs (a listing, a trainer closed at once)
        are skipped; a run that trained but left nothing to continue from ends the search."""
        for run in self.store.runs():
            if run["status"] in OPEN:
                continue  # held by a live trainer (crashed ones were marked before this)
            autosave = self.autosaver.latest(run["id"])
            if autosave is not None:
                return "autosave", autosave.path, run
            origin, continued = run["config"].get("from_checkpoint"), run["config"].get("continues")
            if origin and self.store.checkpoint(origin) is not None:
                return "checkpoint", origin, run
            if continued and Path(continued["autosave"]).is_dir():
                return "autosave", Path(continued["autosave"]), run
            if self.store.last_step(run["id"]) is not None:
                return None
        return None

    # ---- helpers -----------------------------------------------------------------------------
    def _snapshot(self, copy: bool = False) -> tuple[dict, dict, dict]:
        """Weights, optimizer state by parameter name, and the meta every checkpoint records;
        with `copy`, CPU copies that training may not change while they are written."""
        take = (lambda t: t.detach().to("cpu", copy=True)) if copy else (lambda t: t)
        names = self._parameter_names()
        weights = {f"model.{k}": take(v) for k, v in self.model.state_dict().items()}
        for active in self.tasks.values():
            if active.task.head is not None:
                weights.update({f"task.{active.task.name}.{k}": take(v)
                                for k, v in active.task.head.state_dict().items()})
        optimizer_state = {names[p]: {k: take(v) if isinstance(v, torch.Tensor) else torch.tensor(v)
                                      for k, v in state.items()}
                           for p, state in self.optimizer.state.items() if p in names}
        metrics = {f"loss/{t.task.name}": t.last_loss for t in self.tasks.values() if t.last_loss is not None}
        metrics.update({f"eval/{task}/{k}": v for task, values in self.last_eval.items() for k, v in values.items()})
        meta = {"parent": self.parent_checkpoint, "step": self.step, "run_id": self.run_id,
                "created": time.time(), "model": self.model.config(),
                "tasks": [{**t.task.spec(), "enabled": t.enabled} for t in self.tasks.values()],
                "optimizer": {"type": "Adam", "lr": self.optimizer.param_groups[0]["lr"]}, "metrics": metrics,
                "trained_under": list(self.trained_under)}
        return weights, optimizer_state, meta

    def _build_from(self, data: CheckpointData) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
        """Model, optimizer and tasks from a checkpoint, built beside the live ones (which stay)."""
        meta = data.meta
        model = self._prepare_model(build_model(meta["model"]))
        model.load_state_dict(data.model_state())
        tasks: dict[str, ActiveTask] = {}
        for spec in meta["tasks"]:
            if spec["type"] not in self.registry:
                raise ValueError(f"checkpoint needs task type {spec['type']!r}, which is not in the registry")
            task = self.registry.get(spec["type"])(
                name=spec["name"], latent=spec["latent"], dataset=spec["dataset"], weight=spec["weight"],
                out_dim=spec["out_dim"], isolation=spec["isolation"], **spec["params"])
            self._data(task.dataset)
            self._bind(task, model)
            if task.head is not None:
                task.head.load_state_dict(data.head_state(task.name))
            tasks[task.name] = ActiveTask(task, enabled=spec.get("enabled", True))
        optimizer = self._new_optimizer(model, list(tasks.values()))
        for group in optimizer.param_groups:
            group["lr"] = meta["optimizer"]["lr"]
        by_name = {v: k for k, v in self._parameter_names(model, tasks).items()}
        for param_name, state in data.optimizer.items():
            if param_name in by_name:  # scalars (e.g. Adam's step) stay on the CPU, as torch keeps them
                optimizer.state[by_name[param_name]] = {
                    k: v if v.dim() == 0 else v.to(self.device) for k, v in state.items()}
        return model, optimizer, tasks

    def _install(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tasks: dict[str, ActiveTask],
                 step: int, parent: str | None) -> None:
        self._finish_run()
        with self._lock:
            self.model, self.optimizer, self.tasks = model, optimizer, tasks
        self.step, self.parent_checkpoint = step, parent
        self.last_eval, self.last_eval_step = {}, None
        self.trained_under, self._numerics = [], None
        self._reset_streams()
