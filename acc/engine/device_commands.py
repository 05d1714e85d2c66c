"""The engine's device roles (M4): which device trains, and which one evaluates beside it; and
its evaluations, wherever they run.

A mixin of `Engine` (acc/engine/trainer.py). Moving training to another device is a command, so
it happens at a step boundary: the model, the task heads, Adam's state and the batch streams'
data move together. Setting an eval device starts an evaluation worker there
(`acc.engine.eval_worker`): from then on periodic evaluations, [Eval] and factoring jobs run in
that process on snapshots of the weights, and training never waits for them. Without one,
evaluations run on the training thread as before. Either way the results are recorded at the step
evaluated (`_record_eval`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import torch
from safetensors.torch import save

from acc.datasets import Dataset
from acc.engine.devices import check_device
from acc.engine.eval_worker import EvalWorker
from acc.engine.evaluation import evaluate_tasks

EVAL_TIMEOUT_S = 600


class DeviceCommands:
    """Device roles; see the module docstring."""

    eval_worker: EvalWorker | None = None
    _closing_workers: list[threading.Thread] = []  # workers being stopped (replaced by a list, never appended to)
    _train_threads: int  # torch's threads before a worker took some of the cores (set by Engine.__init__)
    train_threads: int | None = None  # torch threads training uses now (None: as the process started)

    # ---- public, thread-safe ---------------------------------------------------------------------
    def roles(self) -> dict:
        worker = self.eval_worker
        return {"train": str(self.device), "eval": worker.device if worker else None, **self.mode(),
                "train_threads": self.train_threads,
                "eval_worker": {"alive": worker.alive, "restarts": worker.restarts} if worker else None}

    def set_train_device(self, device: str) -> dict:
        return self.call("set_train_device", device=device)

    def set_eval_device(self, device: str | None) -> dict:
        """Evaluate in a worker process on `device` from now on (None: on the training thread).
        A worker that is replaced is stopped: what it still had to do fails with an error saying so."""
        return self.call("set_eval_device", device=device)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Evaluate every enabled task on its validation data now; returns {task: {metric: value}}.
        With an eval device, a snapshot is evaluated in the worker while training goes on."""
        return self.evaluation()["results"]

    def evaluation(self) -> dict:
        """`evaluate`, as {"step": the step evaluated, "results"}: with an eval device, the step of
        the snapshot (training went on meanwhile)."""
        if self.eval_worker is None:
            return self.call("evaluate_at")
        return self.call("evaluate_beside").result(EVAL_TIMEOUT_S)

    # ---- commands ----------------------------------------------------------------------------
    def _do_evaluate_at(self) -> dict:
        return {"step": self.step, "results": self._evaluate()}

    def _do_set_train_device(self, device: str) -> dict:
        target = torch.device(check_device(device))
        if not self.ranks.single:
            raise ValueError(f"training runs on {self.ranks.world} ranks, each on its own device: "
                             "go back to one rank (mode single) before moving it")
        self.model.to(target)
        for active in self.tasks.values():
            if active.task.head is not None:
                active.task.head.to(target)
        for state in self.optimizer.state.values():  # scalars (Adam's step) stay on the CPU, as torch keeps them
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = value.to(target)
        for source in self.data.values():  # the same stream, its data moved: batches go on where they were
            source.stream.data, source.stream.device = source.stream.data.to(target), target
        self.device = target
        self._share_cores()
        self._event("devices", f"training moved to {target}", train=str(target))
        return self.roles()

    def _do_set_eval_device(self, device: str | None) -> dict:
        old = self.eval_worker
        device = check_device(device) if device is not None else None
        if (old.device if old is not None else None) == device:
            return self.roles()  # as asked already: the worker (and whatever it is doing) stays
        if device is not None:
            settings = {k: getattr(self.config, k) for k in ("val_fraction", "seed", "eval_samples", "batch_size")}
            self.eval_worker = EvalWorker(device, self.workspace.root, settings)
        else:
            self.eval_worker = None
        self._share_cores()
        if old is not None:  # its process may take a moment to stop: not on the training thread
            closing = threading.Thread(target=old.close, name="acc-eval-worker-close", daemon=True)
            closing.start()
            self._closing_workers = [*self._closing_workers, closing]
        self._event("devices", f"evaluation {'on ' + device + ' beside training' if device else 'on the training thread'}",
                    eval=device)
        return self.roles()

    def _do_evaluate_beside(self) -> Future:
        """Hand a snapshot to the worker; its result is recorded (at the snapshot's step) when it comes."""
        future = self.eval_worker.evaluate(self._eval_snapshot())
        future.add_done_callback(lambda done: self._commands.submit("eval_result", done=done))
        return future

    def _do_eval_result(self, done: Future) -> None:
        if done.exception() is not None:
            self._emit_error(None, f"evaluation beside training failed: {done.exception()}")
            return
        result = done.result()
        for name, error in result["errors"].items():
            if name in self.tasks and self.tasks[name].enabled:
                self._disable(self.tasks[name], f"during evaluation (step {result['step']}): {error}")
        self._record_eval(result["step"], result["run_id"], result["results"])

    # ---- evaluation --------------------------------------------------------------------------
    def _periodic_eval(self) -> None:
        if self.eval_worker is not None:
            self._do_evaluate_beside()
        else:
            self._evaluate()

    def _evaluate(self) -> dict[str, dict[str, float]]:
        """Evaluate the enabled tasks here, on the training thread."""
        groups: dict[str, tuple[Dataset, list]] = {}
        for active in self._enabled_tasks():
            groups.setdefault(active.task.dataset, (self.data[active.task.dataset].validation, []))[1].append(active.task)
        results, errors = evaluate_tasks(self.model, groups, self.config.eval_samples, self.config.batch_size, self.device)
        for name, error in errors.items():
            self._disable(self.tasks[name], f"during evaluation: {error}")
        return self._record_eval(self.step, self.run_id, results)

    def _record_eval(self, step: int, run_id: int, results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """An evaluation's results into the store and onto the stream, at the step it evaluated."""
        self.last_eval, self.last_eval_step = results, step
        flat = {f"eval/{task}/{k}": v for task, values in results.items() for k, v in values.items()}
        if flat:
            self.store.log_metrics(run_id, step, flat)
        self.store.log_eval(run_id, step, results)
        self._publish({"type": "eval", "step": step, "results": results})
        return results

    # ---- helpers -----------------------------------------------------------------------------
    def _share_cores(self) -> None:
        """A worker on the CPU that training also runs on gets its own cores: training keeps the
        rest. Both processes spinning OpenMP threads on the same cores would slow training far
        more than the CPU the evaluation takes (measured: benchmarks/bench_factoring.py)."""
        worker = self.eval_worker
        shared = worker is not None and worker.device == "cpu" and self.device.type == "cpu"
        cores = os.cpu_count() or 1
        # On the engine thread, which is the one that trains (OpenMP's thread count is per thread).
        threads = max(1, cores - worker.threads) if shared else self._train_threads
        if self.device.type == "cpu":  # the ranks of a data-parallel job on this box share its cores
            threads = max(1, threads // self.ranks.world)
        if self.config.threads:  # held by request (EngineConfig.threads), for runs that repeat bitwise
            threads = self.config.threads
        if self.status == "running" and threads != torch.get_num_threads():
            self._event("threads", f"training threads {torch.get_num_threads()} -> {threads}: from this step its "
                                   "numbers differ bitwise from a run of the same seed without the change",
                        threads=threads)
        self.train_threads = threads
        torch.set_num_threads(self.train_threads)
        self._numerics = None  # read again at the next step

    def _close_eval_worker(self) -> None:
        """At the engine's close: stop the worker, and wait for those stopped before."""
        worker, self.eval_worker = self.eval_worker, None
        if worker is not None:
            worker.close()
        for closing in self._closing_workers:
            closing.join(15)

    def _eval_snapshot(self) -> dict:
        """The weights as CPU safetensors bytes and the enabled tasks as specs: plain data (a copy,
        so training may go on at once; about a millisecond for the built-in models)."""
        def pack(module: torch.nn.Module) -> bytes:
            return save({k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()})

        tasks = [{**t.task.spec(), "head": pack(t.task.head) if t.task.head is not None else None}
                 for t in self._enabled_tasks()]
        return {"step": self.step, "run_id": self.run_id, "model": self.model.config(),
                "weights": pack(self.model), "tasks": tasks}
