"""The engine's task commands: add, remove, update, staleness after a file changes, and the time
each task takes per step.

A mixin of `Engine` (acc/engine/trainer.py): these run on the engine thread like every command. A
task's head joins the optimizer as a parameter group of its own and leaves it whole when the task
is removed, its optimizer state with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acc.tasks.base import Task, check_weight


class DuplicateTaskError(ValueError):
    """A task with that name is already in the engine."""


@dataclass
class TaskState:
    name: str
    type: str
    latent: str
    dataset: str
    weight: float
    enabled: bool
    stale: bool
    error: str | None
    last_loss: float | None
    step_ms: float | None  # time its loss() took in the last step
    slow: bool  # step_ms is over the engine's `slow_task_s`


@dataclass
class ActiveTask:
    task: Task
    enabled: bool = True
    stale: bool = False
    error: str | None = None
    last_loss: float | None = None
    step_ms: float | None = None
    slow: bool = False

    def state(self) -> TaskState:
        t = self.task
        return TaskState(t.name, type(t).__name__, t.latent, t.dataset, t.weight, self.enabled,
                         self.stale, self.error, self.last_loss, self.step_ms, self.slow)


class TaskCommands:
    """Add, remove and update tasks; see the module docstring."""

    # ---- public, thread-safe ---------------------------------------------------------------------
    def add_task(self, type: str, name: str | None = None, **options: Any) -> TaskState:
        return self.call("add_task", type=type, name=name, options=options)

    def remove_task(self, name: str) -> None:
        self.call("remove_task", name=name)

    def update_task(self, name: str, weight: float | None = None, enabled: bool | None = None) -> TaskState:
        return self.call("update_task", name=name, weight=weight, enabled=enabled)

    # ---- commands ----------------------------------------------------------------------------
    def _do_add_task(self, type: str, name: str | None, options: dict) -> TaskState:
        cls = self.registry.get(type)
        task = cls(name=name, **options)
        if task.name in self.tasks:
            raise DuplicateTaskError(f"a task named {task.name!r} already exists")
        task.check_data(self._data(task.dataset).stream.data)
        self._bind(task, self.model)
        if task.head is not None:
            self.optimizer.add_param_group({"params": list(task.head.parameters()), "name": f"task:{task.name}"})
        with self._lock:
            self.tasks[task.name] = ActiveTask(task)
        self._event("task_added", f"task {task.name!r} ({type}) added", task=task.spec())
        return self.tasks[task.name].state()

    def _do_remove_task(self, name: str) -> None:
        active = self._task(name)
        self._drop_param_group(f"task:{name}")
        with self._lock:
            del self.tasks[name]
        self._event("task_removed", f"task {name!r} removed", task=active.task.spec())

    def _do_update_task(self, name: str, weight: float | None, enabled: bool | None) -> TaskState:
        active = self._task(name)
        if weight is not None:
            active.task.weight = check_weight(weight)
        if enabled is not None:
            active.enabled = bool(enabled)
            if enabled:
                active.error = None
        self._event("task_updated", f"task {name!r} updated", task=name, weight=weight, enabled=enabled)
        return active.state()

    def _do_refresh_stale(self) -> None:
        current = self.registry.items()
        for active in self.tasks.values():
            stale = current.get(type(active.task).__name__) is not type(active.task)
            if stale != active.stale:
                active.stale = stale
                self._event("task_stale", f"task {active.task.name!r} stale={stale}",
                            task=active.task.name, stale=stale)

    # ---- helpers -----------------------------------------------------------------------------
    def _time_tasks(self, task_ms: dict[str, float]) -> None:
        """Record each task's time; flag (once, on the stream) a task that turns slow."""
        limit_ms = 1000 * self.config.slow_task_s
        for name, ms in task_ms.items():
            active = self.tasks[name]
            active.step_ms = ms
            slow = ms > limit_ms
            if slow == active.slow:
                continue
            active.slow = slow
            if slow:
                self._emit_error(name, f"task {name!r} is slow: its loss took {ms / 1000:.2f} s this step "
                                       f"(limit {self.config.slow_task_s:g} s); every control waits for the step")
            self._event("task_slow", f"task {name!r} slow={slow}", task=name, slow=slow, step_ms=ms)

    def _drop_param_group(self, name: str) -> None:
        # By position, never `list.remove`: that compares groups with ==, and a group is a dict
        # that holds tensors. Found first, then dropped: nothing changes if anything fails.
        found = [i for i, group in enumerate(self.optimizer.param_groups) if group.get("name") == name]
        for index in reversed(found):
            group = self.optimizer.param_groups.pop(index)
            for p in group["params"]:
                self.optimizer.state.pop(p, None)

    def _bind(self, task: Task, model: nn.Module) -> None:
        """Bind a task to a model; its head starts from a seed of its own (not the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed_for(f"task:{task.name}"))
            task.bind(model)
        if task.head is not None:
            task.head.to(self.device)

    def _task(self, name: str) -> ActiveTask:
        if name not in self.tasks:
            raise KeyError(f"no task named {name!r}; tasks: {sorted(self.tasks)}")
        return self.tasks[name]

    def _enabled_tasks(self) -> list[ActiveTask]:
        return [t for t in self.tasks.values() if t.enabled]

    def _disable(self, active: ActiveTask, error: str) -> None:
        active.enabled, active.error = False, error
        self._emit_error(active.task.name, f"task {active.task.name!r} disabled: {error}")
