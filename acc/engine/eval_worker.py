"""Evaluation beside training (M4, mode 1): a worker process on the eval device.

The engine hands over *snapshots* of the weights (CPU copies as safetensors bytes, the task specs
and head weights: plain data, never pickles of user objects) and goes on training. The mailbox
holds one snapshot: a newer one replaces one that has not started (whoever waited for the older
gets the newer's result, which names its own step), so training never waits for an evaluation.
Factoring jobs (M5) queue behind it, each one run. The worker is a `spawn`ed process (never
`fork`: the parent holds threads and, on a GPU box, a CUDA context); it loads the workspace's
task files and datasets itself and evaluates with the engine's own code
(`acc.engine.evaluation.evaluate_tasks`), so both give the same numbers. A worker that dies is
started again; what it was doing fails with an error that says so, and training goes on.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a wait for the worker's answer checks that it is still alive


class EvalWorkerError(RuntimeError):
    """The evaluation worker failed a request (its error, or its death)."""


@dataclass
class _Request:
    payload: dict
    future: Future = field(default_factory=Future)
    progress: Callable[[float, str], None] | None = None


class EvalWorker:
    """The parent's side: the mailbox, the factoring queue, one thread that feeds the process one
    request at a time and reads its answers, and the restart of a process that died."""

    def __init__(self, device: str, workspace_root: str | Path, settings: dict, threads: int | None = None) -> None:
        """`settings`: the engine's `val_fraction`, `seed`, `eval_samples`, `batch_size` (the
        validation split and the evaluation the worker must reproduce)."""
        self.device, self.root, self.settings = device, str(workspace_root), dict(settings)
        # On the CPU the worker shares the cores with training: it takes half of them, at least one.
        self.threads = threads or (max(1, (os.cpu_count() or 2) // 2) if device == "cpu" else 1)
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()
        self._latest: _Request | None = None  # the snapshot mailbox: one, the newest
        self._jobs: deque[_Request] = deque()
        self._closed = False
        self._next_id = 0
        self._start_process()
        self._thread = threading.Thread(target=self._feed, name=f"acc-eval-worker-{device}", daemon=True)
        self._thread.start()

    # ---- what the engine and the factoring service call (never blocking) ----------------------
    def evaluate(self, snapshot: dict) -> Future:
        """Evaluate a snapshot (`snapshot_of` in the engine); its Future gets
        {"step", "run_id", "results", "errors"}. Replaces a snapshot that has not started."""
        request = _Request({"kind": "evaluate", **snapshot})
        with self._cond:
            replaced, self._latest = self._latest, request
            self._cond.notify_all()
        if replaced is not None:  # its waiters get the newer result
            request.future.add_done_callback(lambda done: _copy_outcome(done, replaced.future))
        return request.future

    def factoring(self, request: dict, progress: Callable[[float, str], None] | None = None) -> Future:
        """Run one factoring evaluation (`acc.engine.factoring.evaluate_checkpoint`'s arguments as
        plain data); its Future gets the report. `{"prepare": True}` only builds the workspace's
        evaluator there (held-out sets, digit classifier), written to the workspace."""
        job = _Request({"kind": "factoring", **request}, progress=progress)
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def close(self, timeout: float = 10) -> None:
        with self._cond:
            self._closed = True
            pending = [r for r in [self._latest, *self._jobs] if r is not None]
            self._latest, self._jobs = None, deque()
            self._cond.notify_all()
        for request in pending:
            request.future.set_exception(EvalWorkerError(f"the evaluation worker on {self.device} was stopped"))
        self._requests.put(None)
        self._thread.join(timeout)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._close_queues()

    def _close_queues(self) -> None:
        for channel in (self._requests, self._results):
            channel.close()
            channel.join_thread()

    # ---- the feeding thread ------------------------------------------------------------------
    def _start_process(self) -> None:
        self._requests, self._results = self._ctx.Queue(), self._ctx.Queue()
        self._process = self._ctx.Process(target=serve, name=f"acc-eval-{self.device}", daemon=True,
                                          args=(self.device, self.root, self.settings, self.threads,
                                                self._requests, self._results))
        self._process.start()

    def _feed(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._latest is None and not self._jobs:
                    self._cond.wait()
                if self._closed:
                    return
                if self._latest is not None:  # a snapshot is quick, and the newest is what matters
                    request, self._latest = self._latest, None
                else:
                    request = self._jobs.popleft()
            self._next_id += 1
            self._requests.put({**request.payload, "id": self._next_id})
            self._answer(request, self._next_id)

    def _answer(self, request: _Request, request_id: int) -> None:
        while True:
            try:
                message = self._results.get(timeout=POLL_S)
            except queue.Empty:
                if self._process.is_alive() and not self._closed:
                    continue
                code = self._process.exitcode
                error = EvalWorkerError(f"the evaluation worker on {self.device} died (exit code {code}) "
                                        f"during a {request.payload['kind']} request; it is restarted")
                if not self._closed:  # restarted before the waiter hears of it: the error says so
                    log.warning(str(error))
                    self.restarts += 1
                    self._close_queues()
                    self._start_process()
                if not request.future.done():
                    request.future.set_exception(error)
                return
            if message.get("id") != request_id:
                continue  # an answer to a request of a process that was replaced
            if "progress" in message:
                if request.progress is not None:
                    request.progress(message["progress"], message.get("stage", ""))
                continue
            if not request.future.done():
                if "error" in message:
                    request.future.set_exception(EvalWorkerError(message["error"]))
                else:
                    request.future.set_result(message["result"])
            return


def _copy_outcome(source: Future, target: Future) -> None:
    if target.done():
        return
    if source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


# ---- the worker process ---------------------------------------------------------------------------
def serve(device: str, root: str, settings: dict, threads: int, requests: Any, results: Any) -> None:
    """The worker's loop (top level, so that `spawn` can import it): one request at a time."""
    import torch

    torch.set_num_threads(threads)
    worker = _Worker(device, root, settings)
    while True:
        request = requests.get()
        if request is None:
            return
        try:
            if request["kind"] == "evaluate":
                result = worker.evaluate(request)
            else:
                result = worker.factoring(request, lambda f, stage: results.put(
                    {"id": request["id"], "progress": f, "stage": stage}))
            results.put({"id": request["id"], "result": result})
        except Exception as e:  # the worker answers every request; it never dies of one
            from acc.engine.errors import error_text
            results.put({"id": request["id"], "error": error_text(e)})


class _Worker:
    """What lives in the worker process: the workspace's task registry, datasets and evaluator."""

    def __init__(self, device: str, root: str, settings: dict) -> None:
        from acc.registry import Registry
        from acc.tasks.base import Task
        from acc.workspace import Workspace

        self.device, self.settings = device, settings
        self.workspace = Workspace.resolve(root)
        self.tasks = Registry("tasks", Task, self.workspace.registry_folders("tasks"))
        self.tasks.scan()
        self.validation: dict[str, Any] = {}
        self.factoring_service: Any = None

    def evaluate(self, snapshot: dict) -> dict:
        from safetensors.torch import load

        from acc.catalog import load_dataset
        from acc.engine.evaluation import evaluate_tasks
        from acc.models import build_model

        model = build_model(snapshot["model"])
        model.load_state_dict(load(snapshot["weights"]))
        model.to(self.device)
        groups: dict[str, tuple[Any, list]] = {}
        for spec in snapshot["tasks"]:
            if spec["type"] not in self.tasks:
                self.tasks.scan()  # a task file added since the worker started
            task = self.tasks.get(spec["type"])(
                name=spec["name"], latent=spec["latent"], dataset=spec["dataset"], weight=spec["weight"],
                out_dim=spec["out_dim"], isolation=spec["isolation"], **spec["params"])
            task.bind(model)
            if task.head is not None:
                task.head.load_state_dict(load(spec["head"]))
                task.head.to(self.device)
            if task.dataset not in self.validation:  # the engine's split: same fraction and seed
                data = load_dataset(task.dataset, self.workspace.data_dirs, self.workspace.mnist_dir)
                self.validation[task.dataset] = data.split(self.settings["val_fraction"], self.settings["seed"])[1]
            groups.setdefault(task.dataset, (self.validation[task.dataset], []))[1].append(task)
        results, errors = evaluate_tasks(model, groups, self.settings["eval_samples"], self.settings["batch_size"],
                                         self.device)
        return {"step": snapshot["step"], "run_id": snapshot["run_id"], "results": results, "errors": errors}

    def factoring(self, request: dict, progress: Callable[[float, str], None]) -> dict:
        from acc.engine.factoring import evaluate_checkpoint, load_evaluator
        from acc.eval.evaluator import FactoringConfig

        if self.factoring_service is None:
            progress(0.0, "building the held-out sets and the digit classifier")
            self.factoring_service = load_evaluator(self.workspace)
        if request.get("prepare"):  # only the evaluator: the parent then reads it from the workspace
            return {}
        config = FactoringConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in request["config"].items()})
        return evaluate_checkpoint(request["row"], config, self.factoring_service, Path(request["folder"]),
                                   self.device, progress)
