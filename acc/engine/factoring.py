"""Factoring evaluations of checkpoints as background jobs: the report in the store, figures as PNGs.

A job loads the checkpoint into a model instance of its own (the live model is never touched, and
training goes on), runs `acc.eval.evaluator.FactoringEvaluator` on the workspace's held-out sets
with the workspace's fixed digit classifier (both built on first use and cached on disk), then
writes the figures to `<workspace>/evals/<checkpoint>/<key>/` (atomically: a temp folder renamed)
and the report to the store. `key` hashes what the result depends on (the checkpoint's tensor
digests, the settings, the held-out sets, the classifier), so asking again for an unchanged
checkpoint with the same settings answers with the stored report at once. A checkpoint that is
missing or corrupt fails its job with the reason, and nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from acc.engine.checkpoint import read_checkpoint
from acc.engine.events import Subscribers
from acc.engine.jobs import Job, JobManager
from acc.eval.classifier import load_or_train
from acc.eval.data import evaluation_sets
from acc.eval.evaluator import FactoringConfig, FactoringEvaluator
from acc.eval.figures import png_bytes
from acc.mnist import load_mnist
from acc.models import build_model
from acc.store import Store
from acc.workspace import Workspace

VERSION = 3  # of the evaluation: a change makes every stored report stale
FIGURE_KINDS = ("traversal", "activation", "attention")


def figure_file(kind: str, group: str | None) -> str:
    """`traversal-thickness.png`; `attention.png` (one figure for all groups)."""
    return f"{kind}.png" if group is None else f"{kind}-{group}.png"


def load_evaluator(workspace: Workspace) -> FactoringEvaluator:
    """The workspace's evaluator: its held-out sets and fixed digit classifier (built on first use,
    then read from `<workspace>/evals/`)."""
    sets = evaluation_sets(workspace.evals_dir / "sets", workspace.mnist_dir)
    train, test = load_mnist(workspace.mnist_dir, "train"), load_mnist(workspace.mnist_dir, "test")
    classifier = load_or_train(workspace.evals_dir / "classifier", train, test, test.meta["source"])
    return FactoringEvaluator(sets, classifier)


def evaluate_checkpoint(row: dict, config: FactoringConfig, evaluator: FactoringEvaluator, folder: Path,
                        device: str, progress: Callable[[float, str], None]) -> dict:
    """Evaluate the checkpoint of store row `row` (its id, name, step, path) on `device`; its
    figures are written to `folder` (whole or not at all: a temp folder renamed). Returns the
    report. Used in the session's process and in the evaluation worker's."""
    data = read_checkpoint(row["path"])  # a corrupt or missing file fails here, nothing written
    model = build_model(data.meta["model"])
    model.load_state_dict(data.model_state())
    model.to(device)
    runner = evaluator if config == evaluator.config else FactoringEvaluator(evaluator.sets, evaluator.classifier, config)
    report, pictures = runner.evaluate(model, data.meta.get("tasks", []), progress)
    report = {"checkpoint": row["id"], "name": row["name"], "step": row["step"], **report}
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, image in pictures.items():
        kind, _, group = name.partition("/")
        (tmp / figure_file(kind, group or None)).write_bytes(png_bytes(image))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return report


class FactoringService:
    """Starts factoring jobs and serves their reports and figures; one per session. With an
    evaluation worker (`worker()` not None: an eval device is set), the evaluation itself runs
    in the worker's process."""

    def __init__(self, workspace: Workspace, store: Store, jobs: JobManager, device: str = "cpu",
                 worker: Callable[[], Any] = lambda: None) -> None:
        self.workspace, self.store, self.jobs, self.device, self.worker = workspace, store, jobs, device, worker
        self._evaluator: FactoringEvaluator | None = None
        self._lock = threading.Lock()  # one evaluator is built at a time
        self._subscribers: Subscribers[dict] = Subscribers()
        self._jobs: dict[str, tuple[str, str]] = {}  # job id -> (checkpoint id, stage)
        jobs.subscribe(self._on_job)

    def subscribe(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        """`callback({"checkpoint", "job", "status", "progress", "stage"})` as a factoring job goes."""
        return self._subscribers.add(callback)

    # ---- what the API calls ------------------------------------------------------------------
    def start(self, checkpoint_id: str, config: FactoringConfig | None = None) -> Job:
        """A job evaluating the checkpoint (KeyError if there is none); done at once when the
        stored report for these settings is still valid."""
        row = self._checkpoint(checkpoint_id)
        config = config or FactoringConfig()

        def work(job: Job) -> dict:
            def progress(fraction: float, stage: str) -> None:
                self._jobs[job.id] = (row["id"], stage)
                self.jobs.progress(job, fraction)
            worker = self.worker()
            if worker is not None and self._evaluator is None:
                # What a first evaluation builds (the held-out sets, the digit classifier: a minute
                # on a CPU) is built in the worker too, off the training process; here it is read.
                worker.factoring({"prepare": True}, progress).result()
            evaluator = self.evaluator(progress)
            key = self.key(row, config, evaluator)
            stored = self.store.factoring(row["id"], key)
            if stored is not None and self._folder(row["id"], key).is_dir():
                self._jobs[job.id] = (row["id"], "stored report")
                return {"checkpoint": row["id"], "key": key, "cached": True, "ufr": stored["ufr"]}
            report = self._evaluate(row, config, evaluator, key, progress)
            return {"checkpoint": row["id"], "key": key, "cached": False, "ufr": report["ufr"]}

        def register(job: Job) -> None:
            self._jobs[job.id] = (row["id"], "queued")

        return self.jobs.submit("factoring", row["name"], work, prepare=register, checkpoint=row["id"])

    def report(self, checkpoint_id: str) -> dict | None:
        """The checkpoint's newest report (KeyError for an unknown checkpoint)."""
        row = self._checkpoint(checkpoint_id)
        return self.store.factoring(row["id"])

    def figure(self, checkpoint_id: str, kind: str, group: str | None) -> Path:
        """The PNG of the newest report; KeyError when there is no such checkpoint, report or figure."""
        if kind not in FIGURE_KINDS:
            raise ValueError(f"figure kind must be one of {', '.join(FIGURE_KINDS)}, got {kind!r}")
        report = self.report(checkpoint_id)
        if report is None:
            raise KeyError(f"checkpoint {checkpoint_id!r} has no factoring report yet; run one first")
        slots = list(report["slots"])
        if kind == "attention":
            group = None
        elif group not in slots:
            raise KeyError(f"no slot group {group!r}; groups: {', '.join(slots)}")
        path = self._folder(report["checkpoint"], report["key"]) / figure_file(kind, group)
        if not path.is_file():
            raise KeyError(f"no {kind} figure for this checkpoint" + (
                f": {'; '.join(report['parts_missing'])}" if report["parts_missing"] else ""))
        return path

    # ---- the work ----------------------------------------------------------------------------
    def evaluator(self, progress: Callable[[float, str], None] | None = None) -> FactoringEvaluator:
        """The workspace's evaluator (`load_evaluator`), built once per session."""
        with self._lock:
            if self._evaluator is None:
                if progress:
                    progress(0.0, "building the held-out sets and the digit classifier (once per workspace)")
                self._evaluator = load_evaluator(self.workspace)
            return self._evaluator

    def key(self, row: dict, config: FactoringConfig, evaluator: FactoringEvaluator) -> str:
        meta = json.loads((Path(row["path"]) / "meta.json").read_text())
        facts = {"version": VERSION, "checkpoint": row["id"], "digests": meta.get("digests"),
                 "settings": config.key(), "sets": evaluator.sets.info.get("key"),
                 "classifier": evaluator.classifier.info}
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _evaluate(self, row: dict, config: FactoringConfig, evaluator: FactoringEvaluator, key: str,
                  progress: Callable[[float, str], None]) -> dict:
        folder = self._folder(row["id"], key)
        worker = self.worker()
        if worker is not None:
            request = {"row": {k: row[k] for k in ("id", "name", "step", "path")}, "config": asdict(config),
                       "folder": str(folder)}
            report = worker.factoring(request, progress).result()
        else:
            report = evaluate_checkpoint(row, config, evaluator, folder, self.device, progress)
        self.store.put_factoring(row["id"], key, report)
        return report

    # ---- helpers -----------------------------------------------------------------------------
    def _checkpoint(self, checkpoint_id: str) -> dict:
        row = self.store.checkpoint(checkpoint_id)
        if row is None:
            raise KeyError(f"no checkpoint with id or name {checkpoint_id!r}")
        return row

    def _folder(self, checkpoint_id: str, key: str) -> Path:
        return self.workspace.evals_dir / checkpoint_id / key

    def _on_job(self, job: Job) -> None:
        """Each change of a factoring job, as a `factoring` event naming its checkpoint."""
        if job.id in self._jobs:
            checkpoint_id, stage = self._jobs[job.id]
            event: dict[str, Any] = {"checkpoint": checkpoint_id, "job": job.id, "status": job.status,
                                     "progress": job.progress, "stage": stage, "error": job.error}
            self._subscribers.publish(event)
