"""The Task base class: a head and a loss on a named slice of the latent (DESIGN §3).

A researcher writes a subclass in `acc/tasks/<file>.py`; the running trainer picks it up.

    class DummyTask(Task):
        \"\"\"Predict mean pixel intensity from the whole latent.\"\"\"
        def loss(self, out, batch):
            pred = self.head(self.features(out)).squeeze(-1)
            return F.mse_loss(pred, batch["image"].mean(dim=(1, 2, 3)))

Class attributes give defaults that each instance may override when the task is added:
`latent` (a name in the model's `latent_slices`), `dataset`, `weight`, `out_dim`, `isolation`.
Task-specific parameters are declared in a nested pydantic `Params` model (validated, and shown
as a form in the dashboard); their values become attributes of the instance (`self.target`).

Isolation decides where the task's gradient may go (see `features`):
- "probe": nowhere but the head; the model learns nothing from this task;
- "slot": only the task's own slot parameters (needs `"latent_isolated"` from the model,
  otherwise falls back to "shared" with a warning);
- "shared": also into the shared encoder trunk, never into other slots or the decoder.

A helper module next to the task file is imported relatively: `from .my_helpers import f`.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from acc.datasets import Dataset
from acc.protocol import Batch, ModelOutput

ISOLATION_MODES = ("probe", "slot", "shared")
MAX_WEIGHT = 1000.0
NAME_PATTERN = re.compile(r"^(?=.*[A-Za-z0-9])[A-Za-z0-9_.-]{1,64}$")  # "." and ".." are no names


def default_task_name(cls: type) -> str:
    """`DummyTask` -> `dummy_task`: the name a task gets when none is given."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def check_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"weight must be a finite number, got {weight!r}")
    if not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be between 0 and {MAX_WEIGHT:g}, got {weight}")
    return float(weight)


class Task:
    """Base of every task; subclasses implement `loss` and optionally `metrics`."""

    latent: str = "all"
    dataset: str = "mnist"
    weight: float = 1.0
    out_dim: int = 1
    isolation: str = "slot"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, name: str | None = None, *, latent: str | None = None, dataset: str | None = None,
                 weight: float | None = None, out_dim: int | None = None, isolation: str | None = None,
                 **params: Any) -> None:
        self.name = name or default_task_name(type(self))
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"task name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                             "with at least one letter or digit")
        self.latent = latent or type(self).latent
        self.dataset = dataset or type(self).dataset
        self.weight = check_weight(type(self).weight if weight is None else weight)
        self.out_dim = int(out_dim or type(self).out_dim)
        self.isolation = isolation or type(self).isolation
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}")
        try:
            self.params = self.Params.model_validate(params, strict=True)  # `true` is no number
        except ValidationError as e:
            raise ValueError(f"invalid parameters for {type(self).__name__}: {e}") from None
        for key, value in self.params:
            if hasattr(Task, key):  # a parameter must not shadow the task's own machinery
                raise TypeError(f"{type(self).__name__}.Params field {key!r} clashes with a Task attribute")
            setattr(self, key, value)
        self.head: nn.Module | None = None
        self.slice = slice(0)
        self._warned_fallback = False

    # -- set-up by the engine ------------------------------------------------------------------
    def build_head(self, in_dim: int) -> nn.Module | None:
        """The trainable head on the task's latent slice; override for a bigger one, or None."""
        return nn.Linear(in_dim, self.out_dim)

    def bind(self, model: nn.Module) -> None:
        """Attach to a model: resolve the latent slice and build the head. The model is kept as
        `self.model` for a task that encodes or decodes inputs of its own (e.g. `ThicknessSwapTask`)."""
        if self.latent not in model.latent_slices:
            raise ValueError(f"task {self.name!r}: latent {self.latent!r} is not one of the model's "
                             f"latent groups {sorted(model.latent_slices)}")
        self.slice = model.latent_slices[self.latent]
        self.recon_logits = bool(model.recon_logits)
        self.head = self.build_head(self.slice.stop - self.slice.start)
        self.model = model

    def check_data(self, dataset: Dataset) -> None:
        """Refuse a dataset this task cannot train on (raise ValueError saying why), checked when
        the task is added, before it trains; override, e.g. for a target the task needs."""

    # -- what a task author uses ---------------------------------------------------------------
    def features(self, out: ModelOutput) -> torch.Tensor:
        """The task's latent slice, with its gradient isolation applied."""
        latent = out["latent"]
        if self.isolation == "probe":
            latent = latent.detach()
        elif self.isolation == "slot":
            if "latent_isolated" in out:
                latent = out["latent_isolated"]
            elif not self._warned_fallback:
                self._warned_fallback = True
                warnings.warn(f"task {self.name!r}: the model returns no 'latent_isolated', "
                              "so isolation 'slot' falls back to 'shared'", stacklevel=2)
        return latent[:, self.slice]

    def loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement loss(out, batch)")

    def metrics(self, out: ModelOutput, batch: Batch) -> dict[str, float]:
        """Evaluation metrics over a whole validation set (override; the engine adds 'loss')."""
        return {}

    # -- description ---------------------------------------------------------------------------
    def spec(self) -> dict:
        """Everything needed to re-create this task (checkpoints store it)."""
        return {"type": type(self).__name__, "name": self.name, "latent": self.latent,
                "dataset": self.dataset, "weight": self.weight, "out_dim": self.out_dim,
                "isolation": self.isolation, "params": self.params.model_dump(mode="json")}

    @classmethod
    def params_schema(cls) -> dict:
        """Defaults of the common attributes (the name included) and the JSON schema of `Params` (for forms)."""
        return {"defaults": {"name": default_task_name(cls), "latent": cls.latent, "dataset": cls.dataset, "weight": cls.weight,
                             "out_dim": cls.out_dim, "isolation": cls.isolation},
                "schema": cls.Params.model_json_schema()}
