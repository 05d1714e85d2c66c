"""The engine: one thread owns the model, the tasks and the optimizer (DESIGN §5).

Everything else talks to it through commands (`acc.engine.commands`), applied between steps in
the order they arrive, each acknowledged when applied. A step draws one batch per distinct
dataset of the enabled tasks, runs the model once per batch and sums `weight * loss` of the
tasks bound to that dataset. User code that raises or returns a non-finite loss disables its
task (error recorded) and the step is skipped whole; the engine keeps going.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import threading
import time
import traceback
import zlib
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from acc.datasets import BatchStream, Dataset, load_dataset
from acc.engine.checkpoint import new_checkpoint_id, read_checkpoint, remove_incomplete, write_checkpoint
from acc.engine.commands import CommandQueue
from acc.engine.events import Subscribers
from acc.models import build_model
from acc.protocol import check_model, recon_probabilities
from acc.registry import Registry
from acc.store import Store
from acc.tasks.base import Task, check_weight
from acc.workspace import Workspace

log = logging.getLogger(__name__)
Event = dict[str, Any]


class DuplicateTaskError(ValueError):
    """A task with that name is already in the engine."""


class EngineClosed(RuntimeError):
    """The engine was closed; it takes no more commands."""


@dataclass
class EngineConfig:
    model: dict = field(default_factory=lambda: {"name": "factor_slot"})
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    eval_every: int = 500  # steps between evaluations; 0 = only on demand
    eval_samples: int = 1000  # validation images per dataset used by an evaluation
    val_fraction: float = 0.1
    grad_clip: float | None = None  # max gradient norm; None = measure only
    run_name: str | None = None


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


@dataclass
class ActiveTask:
    task: Task
    enabled: bool = True
    stale: bool = False
    error: str | None = None
    last_loss: float | None = None

    def state(self) -> TaskState:
        t = self.task
        return TaskState(t.name, type(t).__name__, t.latent, t.dataset, t.weight, self.enabled,
                         self.stale, self.error, self.last_loss)


@dataclass
class DataSource:
    stream: BatchStream
    validation: Dataset


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def error_text(e: BaseException) -> str:
    """`Type: message (file:line)` of the deepest frame, for an error shown to a researcher, then
    the exception's notes (e.g. the line of the recipe that asked for what failed)."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return "\n".join([f"{type(e).__name__}: {e}{where}", *getattr(e, "__notes__", ())])


def spread(n: int, total: int) -> torch.Tensor:
    """`n` indices evenly spread over `total`: a fixed subset that covers a dataset stored in
    class order (the bundled 5k digits are) instead of its first class only."""
    return torch.linspace(0, total - 1, n).round().long()


def _fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cat_outputs(parts: list[Any]) -> Any:
    """Concatenate per-batch model outputs (tensors, nested dicts) along the batch dimension."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if first.dim() > 0 else first
    if isinstance(first, dict):
        return {k: _cat_outputs([p[k] for p in parts]) for k in first}
    return first


class Engine:
    """Trains a model with live-editable tasks. Thread-safe API; one owner thread does the work."""

    def __init__(self, workspace: Workspace, store: Store, tasks: Registry,
                 config: EngineConfig | None = None, model: nn.Module | None = None) -> None:
        self.workspace, self.store, self.registry = workspace, store, tasks
        self.config = config or EngineConfig()
        self.device = resolve_device(self.config.device)
        torch.manual_seed(self.config.seed)
        self.model = self._prepare_model(model if model is not None else build_model(self.config.model))
        self.optimizer = self._new_optimizer(self.model, [])
        self.tasks: dict[str, ActiveTask] = {}
        self.data: dict[str, DataSource] = {}
        self.step = 0
        self.status = "idle"  # idle | running | paused
        self.parent_checkpoint: str | None = None
        self.samples_per_s = 0.0
        self.last_eval: dict[str, dict[str, float]] = {}
        self.last_eval_step: int | None = None
        self.recent: deque[tuple[int, dict[str, float]]] = deque(maxlen=10_000)  # ring for the stream
        self.run_id = self._new_run()
        remove_incomplete(workspace.checkpoints_dir)

        self._commands = CommandQueue()
        self._lock = threading.Lock()  # guards self.tasks against readers on other threads
        self._subscribers: Subscribers[Event] = Subscribers()
        self._target_step: int | None = None
        self._done: Future | None = None
        self._closing = False
        self._rate_mark = (time.perf_counter(), 0)
        self._samples = 0
        self._unsubscribe_registry = tasks.subscribe(lambda change: self._commands.submit("refresh_stale"))
        self._thread = threading.Thread(target=self._loop, name="acc-engine", daemon=True)
        self._thread.start()

    # ==== public API: thread-safe, each call is a command applied between steps ====================
    def submit(self, kind: str, **args: Any) -> Future:
        if self._closing:
            raise EngineClosed("the engine is closed")
        return self._commands.submit(kind, **args)

    def call(self, kind: str, timeout: float | None = 60, **args: Any) -> Any:
        """Submit a command and wait until it is applied; raises the error that stopped it."""
        return self.submit(kind, **args).result(timeout)

    def add_task(self, type: str, name: str | None = None, **options: Any) -> TaskState:
        return self.call("add_task", type=type, name=name, options=options)

    def remove_task(self, name: str) -> None:
        self.call("remove_task", name=name)

    def update_task(self, name: str, weight: float | None = None, enabled: bool | None = None) -> TaskState:
        return self.call("update_task", name=name, weight=weight, enabled=enabled)

    def set_model(self, config: dict, run_name: str | None = None) -> dict:
        """Replace the model by `build_model(config)`; tasks are removed and a new run begins
        (named `run_name`, else as configured)."""
        return self.call("set_model", config=config, run_name=run_name)

    def set_lr(self, lr: float) -> None:
        self.call("set_lr", lr=lr)

    def start(self, steps: int | None = None) -> Future:
        """Start (or extend) training for `steps` more steps (None: until stopped).
        Returns a Future resolved when those steps are done or training is stopped."""
        return self.call("start", steps=steps)

    def pause(self) -> None:
        self.call("pause")

    def resume(self) -> None:
        self.call("resume")

    def stop(self) -> None:
        self.call("stop")

    def train(self, steps: int, timeout: float | None = None) -> dict:
        """Train `steps` steps and wait for them; returns the state afterwards."""
        self.start(steps).result(timeout)
        return self.state()

    def evaluate(self) -> dict[str, dict[str, float]]:
        return self.call("evaluate")

    def save_checkpoint(self, name: str | None = None, branch: str | None = None, extra: dict | None = None) -> dict:
        """Save a checkpoint; `branch` names its line in the tree (default: the run's name),
        `extra` is kept in its meta (recipes record themselves there)."""
        return self.call("save_checkpoint", name=name, branch=branch, extra=extra or {})

    def load_checkpoint(self, id_or_name: str, branch: str | None = None) -> dict:
        """Continue from a checkpoint, in a new run; with `branch`, that run is a fork of that
        name (checkpoints saved from it are the checkpoint's children on that branch)."""
        return self.call("load_checkpoint", id_or_name=id_or_name, branch=branch)

    def delete_checkpoint(self, checkpoint_id: str) -> dict:
        """Delete a leaf of the checkpoint tree (its files and its row). Refused (ValueError) for a
        checkpoint with children, whose curves and branches descend from it, and for the one the
        trainer continues from; KeyError for an unknown id."""
        row = self.call("delete_checkpoint", checkpoint_id=checkpoint_id)
        shutil.rmtree(row["path"], ignore_errors=True)  # here, not on the training thread
        return {"id": row["id"], "name": row["name"]}

    def fingerprints(self) -> dict:
        """sha256 of the model's tensors and of each task head's, taken between two steps."""
        return self.call("fingerprints")

    def reconstructions(self, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` validation images of MNIST and their reconstructions, in [0, 1], on the CPU."""
        return self.call("reconstructions", n=n)

    def close(self, timeout: float = 10) -> None:
        """Stop training, finish the current step, flush the store; idempotent."""
        if self._closing:
            return
        self._commands.submit("close")
        self._closing = True
        self._thread.join(timeout)
        self._unsubscribe_registry()
        self.store.set_run_status(self.run_id, "closed")
        self.store.flush()

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Events (`{"type": "metrics"|"state"|"eval"|"error"|"checkpoint", ...}`) as they happen.
        Callbacks run on the engine thread: keep them quick (hand off to a queue)."""
        return self._subscribers.add(callback)

    def state(self) -> dict:
        with self._lock:
            tasks = [asdict(t.state()) for t in self.tasks.values()]
        return {"status": self.status, "step": self.step, "run_id": self.run_id,
                "model": self.model.config(), "tasks": tasks, "device": str(self.device),
                "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": self.samples_per_s,
                "parent_checkpoint": self.parent_checkpoint}

    # ==== the owner thread ========================================================================
    def _loop(self) -> None:
        while True:
            idle = self.status != "running" or not self._enabled_tasks()
            command = self._commands.get(timeout=None if idle else 0)
            if command is not None:
                self._apply(command)
                if command.kind == "close":
                    return
                continue
            try:
                self._step()
            except Exception as e:  # the engine itself must never die; pause and report
                log.exception("training step failed")
                self._set_status("paused")
                self._emit_error(None, f"step {self.step} failed, training paused: {error_text(e)}")

    def _apply(self, command) -> None:
        handler = getattr(self, f"_do_{command.kind}", None)
        try:
            if handler is None:
                raise ValueError(f"unknown engine command {command.kind!r}")
            command.future.set_result(handler(**command.args))
        except Exception as e:
            command.future.set_exception(e)

    # ---- commands ----------------------------------------------------------------------------
    def _do_add_task(self, type: str, name: str | None, options: dict) -> TaskState:
        cls = self.registry.get(type)
        task = cls(name=name, **options)
        if task.name in self.tasks:
            raise DuplicateTaskError(f"a task named {task.name!r} already exists")
        self._data(task.dataset)
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

    def _do_set_lr(self, lr: float) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 10):
            raise ValueError(f"learning rate must be in (0, 10], got {lr!r}")
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)
        self._event("lr", f"learning rate set to {lr:g}", lr=lr)

    def _do_start(self, steps: int | None) -> Future:
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self._finish_run()
        self._target_step = None if steps is None else self.step + steps
        self._done = Future()
        self._rate_mark, self._samples = (time.perf_counter(), 0), 0
        self._set_status("running")
        return self._done

    def _do_set_model(self, config: dict, run_name: str | None = None) -> dict:
        """Start over with a new model: tasks are removed, the step is 0, a new run begins."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = self._prepare_model(build_model(config))
        self._finish_run()
        with self._lock:
            self.model, self.tasks = model, {}
        self.optimizer = self._new_optimizer(model, [])
        self.step, self.parent_checkpoint, self.last_eval, self.last_eval_step = 0, None, {}, None
        self.run_id = self._new_run(run_name)
        self._reset_streams()
        self._set_status("idle")
        self._event("model", f"new model {config.get('name')!r}", model=model.config())
        return self.state()

    def _do_pause(self) -> None:
        if self.status == "running":
            self._set_status("paused")

    def _do_resume(self) -> None:
        if self.status == "paused":
            self._rate_mark, self._samples = (time.perf_counter(), 0), 0
            self._set_status("running")

    def _do_stop(self) -> None:
        self._finish_run()
        self._set_status("idle")

    def _do_close(self) -> None:
        self._finish_run()
        self.status = "idle"

    def _do_refresh_stale(self) -> None:
        current = self.registry.items()
        for active in self.tasks.values():
            stale = current.get(type(active.task).__name__) is not type(active.task)
            if stale != active.stale:
                active.stale = stale
                self._event("task_stale", f"task {active.task.name!r} stale={stale}",
                            task=active.task.name, stale=stale)

    def _do_fingerprints(self) -> dict:
        heads = {t.task.name: _fingerprint(t.task.head) for t in self.tasks.values() if t.task.head is not None}
        return {"model": _fingerprint(self.model), "tasks": heads}

    @torch.no_grad()
    def _do_reconstructions(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 1 <= n <= 64:
            raise ValueError(f"n must be between 1 and 64, got {n}")
        validation = self._data("mnist").validation
        images = validation.batch(spread(min(n, len(validation)), len(validation)), self.device)["image"]
        self.model.eval()
        try:
            recon = recon_probabilities(self.model, self.model(images)["recon"])
        finally:
            self.model.train()
        return images.cpu(), recon.clamp(0, 1).cpu()

    def _do_evaluate(self) -> dict[str, dict[str, float]]:
        return self._evaluate()

    def _do_save_checkpoint(self, name: str | None, branch: str | None, extra: dict) -> dict:
        checkpoint_id = new_checkpoint_id()
        name = name or f"step-{self.step}"
        names = self._parameter_names()
        weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for active in self.tasks.values():
            if active.task.head is not None:
                weights.update({f"task.{active.task.name}.{k}": v for k, v in active.task.head.state_dict().items()})
        optimizer_state = {names[p]: {k: v if isinstance(v, torch.Tensor) else torch.tensor(v)
                                      for k, v in state.items()}
                           for p, state in self.optimizer.state.items() if p in names}
        metrics = {f"loss/{t.task.name}": t.last_loss for t in self.tasks.values() if t.last_loss is not None}
        metrics.update({f"eval/{task}/{k}": v for task, values in self.last_eval.items() for k, v in values.items()})
        meta = {
            "name": name, "parent": self.parent_checkpoint, "step": self.step, "run_id": self.run_id,
            "created": time.time(), "model": self.model.config(),
            "tasks": [{**t.task.spec(), "enabled": t.enabled} for t in self.tasks.values()],
            "optimizer": {"type": "Adam", "lr": self.optimizer.param_groups[0]["lr"]},
            "metrics": metrics, "branch": branch or self.store.run(self.run_id)["name"], **extra,
        }
        path = write_checkpoint(self.workspace.checkpoints_dir, checkpoint_id, weights, optimizer_state, meta)
        self.store.add_checkpoint(checkpoint_id, self.run_id, name, self.parent_checkpoint, self.step,
                                  str(path), meta)
        self.parent_checkpoint = checkpoint_id
        self._reset_streams()
        row = {"id": checkpoint_id, "name": name, "parent": meta["parent"], "step": self.step, "branch": meta["branch"],
               "path": str(path), "metrics": metrics}
        self._event("checkpoint", f"checkpoint {name!r} saved at step {self.step}", **row)
        return row

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

    def _do_load_checkpoint(self, id_or_name: str, branch: str | None = None) -> dict:
        row = self.store.checkpoint(id_or_name)
        if row is None:
            raise KeyError(f"no checkpoint with id or name {id_or_name!r}")
        data = read_checkpoint(row["path"])
        meta = data.meta
        # Build everything first; the live state changes only once all of it succeeded.
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

        self._finish_run()
        with self._lock:
            self.model, self.optimizer, self.tasks = model, optimizer, tasks
        self.step, self.parent_checkpoint = meta["step"], row["id"]
        self.last_eval, self.last_eval_step = {}, None
        self._reset_streams()
        self.run_id = self._new_run(branch or f"{row['name']}-resumed", from_checkpoint=row["id"])
        self._set_status("idle")
        self._event("checkpoint_loaded", f"checkpoint {row['name']!r} loaded (step {self.step})", id=row["id"])
        return self.state()

    # ---- training ----------------------------------------------------------------------------
    def _step(self) -> None:
        groups: dict[str, list[ActiveTask]] = {}
        for active in self._enabled_tasks():
            groups.setdefault(active.task.dataset, []).append(active)

        losses: list[tuple[ActiveTask, torch.Tensor]] = []
        samples = 0
        for dataset, members in groups.items():
            batch = self.data[dataset].stream.next()
            samples += batch["image"].shape[0]
            out = self.model(batch["image"])
            for active in members:
                try:
                    loss = active.task.loss(out, batch)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise TypeError(f"loss() must return a scalar tensor, got {type(loss).__name__}")
                except Exception as e:
                    return self._disable(active, error_text(e))
                losses.append((active, loss.reshape(())))

        values = torch.stack([loss.detach().float() for _, loss in losses]).tolist()  # one device sync
        bad = [(active, value) for (active, _), value in zip(losses, values) if not math.isfinite(value)]
        for active, value in bad:
            self._disable(active, f"non-finite loss ({value})")
        if bad:
            return

        self.optimizer.zero_grad(set_to_none=True)
        total = sum(active.task.weight * loss for active, loss in losses)
        total.backward()
        grad_norm = self._clip_gradients()
        if not math.isfinite(grad_norm):  # a finite loss can still give NaN gradients: never apply them
            self.optimizer.zero_grad(set_to_none=True)
            self._emit_error(None, f"non-finite gradient at step {self.step}; step skipped")
            return
        self.optimizer.step()
        self.step += 1

        metrics = {"loss/total": sum(a.task.weight * v for (a, _), v in zip(losses, values))}
        for (active, _), value in zip(losses, values):
            active.last_loss = value
            metrics[f"loss/{active.task.name}"] = value
        metrics["grad_norm"] = grad_norm
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["samples_per_s"] = self._measure_rate(samples)
        self._record(metrics)

        if self.config.eval_every and self.step % self.config.eval_every == 0:
            self._evaluate()
        if self._target_step is not None and self.step >= self._target_step:
            self._finish_run()
            self._set_status("idle")

    def _measure_rate(self, samples: int) -> float:
        self._samples += samples
        start, _ = self._rate_mark
        elapsed = time.perf_counter() - start
        if elapsed >= 0.5:  # refreshed twice a second: per-step timing is too noisy to show
            self.samples_per_s = self._samples / elapsed
            self._rate_mark, self._samples = (time.perf_counter(), 0), 0
        return self.samples_per_s

    def _record(self, metrics: dict[str, float]) -> None:
        self.recent.append((self.step, metrics))
        self.store.log_metrics(self.run_id, self.step, metrics)
        self._publish({"type": "metrics", "step": self.step, "values": metrics})

    @torch.no_grad()
    def _evaluate(self) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        groups: dict[str, list[ActiveTask]] = {}
        for active in self._enabled_tasks():
            groups.setdefault(active.task.dataset, []).append(active)
        self.model.eval()
        try:
            for dataset, members in groups.items():
                validation = self.data[dataset].validation
                index = spread(min(len(validation), self.config.eval_samples), len(validation))
                batch = validation.batch(index, self.device)
                size = self.config.batch_size
                out = _cat_outputs([self.model(batch["image"][i:i + size])
                                    for i in range(0, len(batch["image"]), size)])
                for active in members:
                    try:
                        values = {"loss": float(active.task.loss(out, batch)), **active.task.metrics(out, batch)}
                        results[active.task.name] = {k: float(v) for k, v in values.items() if math.isfinite(v)}
                    except Exception as e:
                        self._disable(active, f"during evaluation: {error_text(e)}")
        finally:
            self.model.train()
        self.last_eval, self.last_eval_step = results, self.step
        flat = {f"eval/{task}/{k}": v for task, values in results.items() for k, v in values.items()}
        if flat:
            self.store.log_metrics(self.run_id, self.step, flat)
        self.store.log_eval(self.run_id, self.step, results)
        self._publish({"type": "eval", "step": self.step, "results": results})
        return results

    # ---- helpers -----------------------------------------------------------------------------
    def _prepare_model(self, model: nn.Module) -> nn.Module:
        check_model(model)
        return model.to(self.device).train()

    def _new_optimizer(self, model: nn.Module, tasks: list[ActiveTask]) -> torch.optim.Optimizer:
        groups = [{"params": list(model.parameters()), "name": "model"}]
        groups += [{"params": list(t.task.head.parameters()), "name": f"task:{t.task.name}"}
                   for t in tasks if t.task.head is not None]
        return torch.optim.Adam(groups, lr=self.config.lr)

    def _clip_gradients(self) -> float:
        """The total gradient norm (logged, and checked for NaN); clipped when `grad_clip` is set."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.config.grad_clip, norm)
        return float(norm)

    def _drop_param_group(self, name: str) -> None:
        for group in list(self.optimizer.param_groups):
            if group.get("name") == name:
                for p in group["params"]:
                    self.optimizer.state.pop(p, None)
                self.optimizer.param_groups.remove(group)

    def _parameter_names(self, model: nn.Module | None = None,
                         tasks: dict[str, ActiveTask] | None = None) -> dict[nn.Parameter, str]:
        model, tasks = model or self.model, self.tasks if tasks is None else tasks
        names = {p: f"model.{n}" for n, p in model.named_parameters()}
        for active in tasks.values():
            if active.task.head is not None:
                names.update({p: f"task.{active.task.name}.{n}" for n, p in active.task.head.named_parameters()})
        return names

    def _data(self, name: str) -> DataSource:
        if name not in self.data:
            dataset = load_dataset(name, self.workspace.data_dirs, self.workspace.mnist_dir)
            train, validation = dataset.split(self.config.val_fraction, self.config.seed)
            stream = BatchStream(train, self.config.batch_size, self._seed_for(name), self.device)
            self.data[name] = DataSource(stream, validation)
        return self.data[name]

    def _new_run(self, name: str | None = None, **extra: Any) -> int:
        name = name or self.config.run_name or time.strftime("run-%Y%m%d-%H%M%S")
        return self.store.create_run(name, {"engine": asdict(self.config), "model": self.model.config(), **extra})

    def _seed_for(self, what: str) -> int:
        """A stable seed per dataset stream or task head, so runs repeat exactly."""
        return self.config.seed + zlib.crc32(f"{what}@{self.step}".encode())

    def _reset_streams(self) -> None:
        """Reseed every data stream from (seed, dataset, step): a run continued from a checkpoint
        then draws the same batches as the run that saved it."""
        for name, source in self.data.items():
            source.stream = BatchStream(source.stream.data, self.config.batch_size, self._seed_for(name), self.device)

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

    def _finish_run(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(self.step)
        self._done, self._target_step = None, None

    def _set_status(self, status: str) -> None:
        self.status = status
        self._event("status", f"status {status}", status=status)

    def _event(self, kind: str, message: str, **data: Any) -> None:
        self.store.log_event(self.run_id, kind, message, self.step, data)
        self._publish({"type": "state", "kind": kind, "message": message, "step": self.step, "data": data})

    def _emit_error(self, task: str | None, message: str) -> None:
        log.warning(message)
        self.store.log_event(self.run_id, "error", message, self.step, {"task": task})
        self._publish({"type": "error", "task": task, "message": message, "step": self.step})

    def _publish(self, event: Event) -> None:
        self._subscribers.publish(event)
