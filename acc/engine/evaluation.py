"""Evaluating tasks on their validation data: the same code in the engine's thread and in the
evaluation worker process (`acc.engine.eval_worker`), so both give the same numbers."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from acc.datasets import Dataset
from acc.engine.errors import error_text
from acc.tasks.base import Task


def spread(n: int, total: int) -> torch.Tensor:
    """`n` indices evenly spread over `total`: a fixed subset that covers a dataset stored in
    class order (the bundled 5k digits are) instead of its first class only."""
    return torch.linspace(0, total - 1, n).round().long()


def cat_outputs(parts: list[Any]) -> Any:
    """Concatenate per-batch model outputs (tensors, nested dicts) along the batch dimension."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if first.dim() > 0 else first
    if isinstance(first, dict):
        return {k: cat_outputs([p[k] for p in parts]) for k in first}
    return first


@torch.no_grad()
def evaluate_tasks(model: nn.Module, groups: dict[str, tuple[Dataset, list[Task]]], samples: int, batch_size: int,
                   device: torch.device | str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """({task: {"loss", metric: value}}, {task: error}): each dataset's validation set (`samples`
    of its items, evenly spread) through the model once in eval mode, every task of that dataset
    scored on the outputs. A task that raises is reported in the errors, never raised; the model's
    train/eval mode is restored."""
    results: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    was_training = model.training
    model.eval()
    try:
        for validation, tasks in groups.values():
            batch = validation.batch(spread(min(len(validation), samples), len(validation)), device)
            out: Any = cat_outputs([model(batch["image"][i:i + batch_size])
                                    for i in range(0, len(batch["image"]), batch_size)])
            for task in tasks:
                try:
                    values = {"loss": float(task.loss(out, batch)), **task.metrics(out, batch)}
                    results[task.name] = {k: float(v) for k, v in values.items() if math.isfinite(v)}
                except Exception as e:
                    errors[task.name] = error_text(e)
    finally:
        model.train(was_training)
    return results, errors
