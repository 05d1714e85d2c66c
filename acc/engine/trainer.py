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
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from acc.engine.autosave import Autosaver
from acc.engine.checkpoint import remove_incomplete
from acc.engine.commands import CommandQueue
from acc.engine.data_parallel import DataParallel
from acc.engine.distributed import Ranks
from acc.engine.device_commands import DeviceCommands
from acc.engine.devices import numerics, resolve_device
from acc.engine.errors import error_text
from acc.engine.evaluation import spread
from acc.engine.events import Subscribers
from acc.engine.expansion import ExpansionCommands
from acc.engine.runs import OwnerLock, RunBookkeeping, mark_crashed
from acc.engine.snapshots import CheckpointCommands
from acc.engine.streams import DataSource, DataStreams
from acc.engine.task_commands import ActiveTask, TaskCommands
from acc.models import build_model
from acc.protocol import check_model, recon_probabilities
from acc.registry import Registry
from acc.store import Store
from acc.workspace import Workspace

log = logging.getLogger(__name__)
Event = dict[str, Any]


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
    autosave_every_s: float = 300.0  # seconds of training between autosaves; 0 = never
    autosave_keep: int = 3  # autosaves kept in the workspace, newest first
    slow_task_s: float = 1.0  # a task whose loss() takes longer per step is flagged as slow
    eval_device: str | None = None  # evaluate in a worker process there, beside training (None: in the loop)
    ranks: int = 1  # data-parallel ranks on this box, each with a batch of batch_size (acc trainer --ddp N)
    # Intra-op threads of training, held whatever runs beside it (None: torch's default, fewer while
    # an eval worker shares the CPU). A seed repeats bitwise only at one thread count.
    threads: int | None = None


def _fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Engine(TaskCommands, CheckpointCommands, ExpansionCommands, DeviceCommands, DataParallel, RunBookkeeping,
             DataStreams):
    """Trains a model with live-editable tasks. Thread-safe API; one owner thread does the work.
    Here: the training itself (start, pause, stop, a new model), the loop and one step. Each mixin
    holds its commands whole, the public call with its handler: the task commands in
    `acc.engine.task_commands`, the checkpoint commands (save, load, delete, autosave, restore) in
    `acc.engine.snapshots`, model expansion in `acc.engine.expansion`, device roles and every
    evaluation (on the training thread or beside it) in `acc.engine.device_commands`, what several
    ranks share at a step boundary in `acc.engine.data_parallel`, how runs open and end in
    `acc.engine.runs`, the data streams and their seeds in `acc.engine.streams`."""

    def __init__(self, workspace: Workspace, store: Store, tasks: Registry,
                 config: EngineConfig | None = None, model: nn.Module | None = None,
                 restore: bool = False, ranks: Ranks | None = None) -> None:
        """With `restore`, continue the workspace's last run from its latest autosave (or the
        checkpoint it started from); `restored_from` says what was loaded (None: a fresh start).
        With `ranks` of several, this engine is rank 0 of a data-parallel job (acc.engine.launch)."""
        self.workspace, self.store, self.registry = workspace, store, tasks
        self.ranks = ranks or Ranks()
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
        remove_incomplete(workspace.checkpoints_dir)
        self.owner = OwnerLock(workspace.locks_dir)
        self.crashed_runs = mark_crashed(store, workspace.locks_dir)
        self.autosaver = Autosaver(workspace.autosaves_dir, self.config.autosave_keep)
        self._saved_step = 0  # the step of the last checkpoint saved or loaded: "unsaved" past it
        self._training_s = 0.0  # seconds of training since the last autosave
        self.restore_error: str | None = None
        # The numerics (acc.engine.devices.numerics) of the steps trained since the parent
        # checkpoint, one entry per change, recorded in the next checkpoint's meta: why two runs
        # of one seed differ. Read on the training thread at the next step after a change.
        self.trained_under: list[dict] = []
        self._numerics: dict | None = None
        # Training's own thread count, read here on the thread that builds the engine: a new thread
        # starts with the count any thread set last (torch keeps one default), another engine's included.
        self._train_threads = torch.get_num_threads()

        self._commands = CommandQueue()
        self._lock = threading.Lock()  # guards self.tasks against readers on other threads
        self._subscribers: Subscribers[Event] = Subscribers()
        self._target_step: int | None = None
        self._done: Future | None = None
        self._closing = False
        self._rate_mark = (time.perf_counter(), 0)
        self._samples = 0
        self.run_id: int | None = None
        self.restored_from = self._restore() if restore else None
        if self.run_id is None:
            self.run_id = self._new_run()
        self._unsubscribe_registry = tasks.subscribe(lambda change: self._commands.submit("refresh_stale"))
        self._thread = threading.Thread(target=self._loop, name="acc-engine", daemon=True)
        self._thread.start()
        if self.config.eval_device:  # on the engine thread, whose torch threads it may change
            self.set_eval_device(self.config.eval_device)
        if self.config.ranks > 1 and self.ranks.single:
            self.set_ranks(self.config.ranks)

    # ==== public API: thread-safe, each call is a command applied between steps ====================
    def submit(self, kind: str, **args: Any) -> Future:
        if self._closing:
            raise EngineClosed("the engine is closed")
        return self._commands.submit(kind, **args)

    def call(self, kind: str, timeout: float | None = 60, **args: Any) -> Any:
        """Submit a command and wait until it is applied; raises the error that stopped it."""
        return self.submit(kind, **args).result(timeout)

    def set_model(self, config: dict, run_name: str | None = None) -> dict:
        """Replace the model by `build_model(config)`; tasks are removed and a new run begins
        (named `run_name`, else as configured). Unsaved training is first saved as checkpoint
        "autosave before new model ..."; the state returned names it under `autosaved`."""
        return self.call("set_model", config=config, run_name=run_name,
                         autosave=f"new model {config.get('name')}")

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

    def fingerprints(self) -> dict:
        """sha256 of the model's tensors and of each task head's, taken between two steps (so this
        waits for the current step; `state()` never does)."""
        return self.call("fingerprints")

    def reconstructions(self, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` validation images of MNIST and their reconstructions, in [0, 1], on the CPU."""
        return self.call("reconstructions", n=n)

    def close(self, timeout: float = 10) -> None:
        """Stop training, finish the current step, autosave, end the run, flush the store; idempotent."""
        if self._closing:
            return
        self._commands.submit("close")
        self._closing = True
        self._thread.join(timeout)
        self._close_eval_worker()
        self._unsubscribe_registry()
        self.autosaver.wait()
        self.store.flush()
        self.owner.close()

    def start_report(self) -> list[str]:
        """What a researcher should know when the trainer starts: crashed runs, what it continues."""
        lines = [f"run {run} had not ended (its trainer died): marked crashed" for run in self.crashed_runs]
        if self.restore_error:
            lines.append(f"starting fresh: {self.restore_error}")
        if self.restored_from:
            lines.append(f"continuing from the {self.restored_from} in run {self.run_id}; "
                         "--fresh starts a new run instead")
        return lines

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Events (`{"type": "metrics"|"state"|"eval"|"error"|"checkpoint", ...}`) as they happen.
        Callbacks run on the engine thread: keep them quick (hand off to a queue)."""
        return self._subscribers.add(callback)

    def state(self) -> dict:
        """What the engine is doing, read without waiting for the training thread (a step may
        take long; reading never does). `unsaved`: it trained since the last checkpoint."""
        with self._lock:
            tasks = [asdict(t.state()) for t in self.tasks.values()]
        return {"status": self.status, "step": self.step, "run_id": self.run_id,
                "model": self.model.config(), "tasks": tasks, "device": str(self.device),
                "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": self.samples_per_s,
                "parent_checkpoint": self.parent_checkpoint, "unsaved": self.step != self._saved_step}

    # ==== the owner thread ========================================================================
    def _loop(self) -> None:
        self._share_cores()  # on this thread: OpenMP's thread count is per thread
        while True:
            idle = self.status != "running" or not self._enabled_tasks()
            command = self._commands.get(timeout=self._idle_wait() if idle else 0)
            if command is not None:
                self._apply(command)
                if command.kind == "close":
                    self._end_ranks()
                    return
                continue
            try:
                self._share_boundary()  # to the other ranks, if any: what changed, and whether to step
                if not idle:
                    self._step()
            except Exception as e:  # the engine itself must never die; pause and report
                log.exception("training step failed")
                if not self.ranks.single:
                    self._lose_ranks(e)
                    continue
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
        finally:
            self._applied(command.kind)

    # ---- commands ----------------------------------------------------------------------------
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
        self._interrupted = False
        self._target_step = None if steps is None else self.step + steps
        self._done = Future()
        self._rate_mark, self._samples = (time.perf_counter(), 0), 0
        self._set_status("running")
        return self._done

    def _do_set_model(self, config: dict, run_name: str | None = None, autosave: str | None = None) -> dict:
        """Start over with a new model: tasks are removed, the step is 0, a new run begins. With
        `autosave`, unsaved training is first saved as checkpoint "autosave before <autosave>"."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = self._prepare_model(build_model(config))
        autosaved = self._do_autosave_before(autosave) if autosave else None
        self._install(model, self._new_optimizer(model, []), {}, step=0, parent=None)
        self._saved_step = 0
        self.run_id = self._new_run(run_name)
        self._set_status("idle")
        self._event("model", f"new model {config.get('name')!r}", model=model.config())
        return {**self.state(), "autosaved": autosaved}

    def _do_pause(self) -> None:
        if self.status == "running":
            self._set_status("paused")

    def _do_resume(self) -> None:
        if self.status == "paused":
            self._rate_mark, self._samples = (time.perf_counter(), 0), 0
            self._set_status("running")

    def _do_stop(self) -> None:
        if self.status != "idle":
            self._interrupted = True
        self._finish_run()
        self._set_status("idle")

    def _do_close(self) -> None:
        """Autosave what a restart would continue from, then end the run."""
        if self.tasks or self.step:
            self._autosave(wait=True)
        self._end_run()
        self._finish_run()
        self.status = "idle"

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

    # ---- training ----------------------------------------------------------------------------
    def _step(self) -> None:
        started = time.perf_counter()
        groups: dict[str, list[ActiveTask]] = {}
        for active in self._enabled_tasks():
            groups.setdefault(active.task.dataset, []).append(active)

        losses: list[tuple[ActiveTask, torch.Tensor]] = []
        task_ms: dict[str, float] = {}
        errors: dict[str, str] = {}  # task -> why it is disabled; the step is then skipped whole
        samples = 0
        for dataset, members in groups.items():
            batch = self.data[dataset].stream.next()
            samples += batch["image"].shape[0]
            out = self.model(batch["image"])
            for active in members:
                # Host time of the task's own code (head and loss; the shared forward is not
                # counted): on a GPU, kernels still running are not in it, which is enough to
                # tell which task holds the step up.
                task_start = time.perf_counter()
                try:
                    loss = active.task.loss(out, batch)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise TypeError(f"loss() must return a scalar tensor, got {type(loss).__name__}")
                except Exception as e:
                    errors[active.task.name] = error_text(e)
                    continue
                task_ms[active.task.name] = 1000 * (time.perf_counter() - task_start)
                losses.append((active, loss.reshape(())))
        self._time_tasks(task_ms)

        values = torch.stack([loss.detach().float() for _, loss in losses]).tolist() if losses else []  # one sync
        for (active, _), value in zip(losses, values):
            if not math.isfinite(value):
                errors[active.task.name] = f"non-finite loss ({value})"
        errors = self._agree_on_errors(errors)  # on several ranks: a task that failed on one fails on all
        for name, error in errors.items():
            self._disable(self.tasks[name], error)
        if errors:
            return

        self.optimizer.zero_grad(set_to_none=True)
        total = sum(active.task.weight * loss for active, loss in losses)
        total.backward()
        self.ranks.average_gradients([p for group in self.optimizer.param_groups for p in group["params"]])
        grad_norm = self._clip_gradients()
        if not math.isfinite(grad_norm):  # a finite loss can still give NaN gradients: never apply them
            self.optimizer.zero_grad(set_to_none=True)
            self._emit_error(None, f"non-finite gradient at step {self.step}; step skipped")
            return
        self.optimizer.step()
        self.step += 1
        if self._numerics is None:  # the first step since a change (or since the parent): one entry per change
            self._numerics = numerics(self.device, self.ranks.world)
            if not self.trained_under or self.trained_under[-1] != self._numerics:
                self.trained_under.append(self._numerics)

        metrics = {"loss/total": sum(a.task.weight * v for (a, _), v in zip(losses, values))}
        for (active, _), value in zip(losses, values):
            active.last_loss = value
            metrics[f"loss/{active.task.name}"] = value
        metrics["grad_norm"] = grad_norm
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["samples_per_s"] = self._measure_rate(samples * self.ranks.world)  # every rank's batches
        metrics.update({f"time/{name}": ms for name, ms in task_ms.items()})
        self._record(metrics)

        if self.config.eval_every and self.step % self.config.eval_every == 0:
            self._periodic_eval()
        self._training_s += time.perf_counter() - started
        if self.config.autosave_every_s and self._training_s >= self.config.autosave_every_s:
            self._training_s = 0.0
            self._autosave()
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

    def _parameter_names(self, model: nn.Module | None = None,
                         tasks: dict[str, ActiveTask] | None = None) -> dict[nn.Parameter, str]:
        model, tasks = model or self.model, self.tasks if tasks is None else tasks
        names = {p: f"model.{n}" for n, p in model.named_parameters()}
        for active in tasks.values():
            if active.task.head is not None:
                names.update({p: f"task.{active.task.name}.{n}" for n, p in active.task.head.named_parameters()})
        return names

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
