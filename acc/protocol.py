"""The model-agnostic forward protocol (DESIGN §3): what the engine and tasks may rely on.

A model is any `nn.Module` with
- `latent_slices: dict[str, slice]`, named groups of latent dimensions, always with `"all"`;
- `recon_logits: bool`, whether `"recon"` holds logits (True) or values in [0, 1] (False);
- `forward(x) -> ModelOutput`, a dict with at least `"latent"` [B, D] and `"recon"` [B,1,28,28];
  optional `"latent_isolated"` (the latent recomputed from trunk features with the gradient
  stopped, enables `isolation="slot"`), `"factors"` (name -> [B, d]), `"attention"`
  (name -> [B, h, w]), and anything else a task may want;
- `config() -> dict`, enough for `acc.models.build_model(config)` to rebuild it;
- optional `decode(latent) -> recon` (same form as `"recon"`): the factoring evaluation's
  traversals decode edited latents with it, and are left out for a model without it.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

ModelOutput = dict[str, Any]


class Batch(TypedDict):
    image: torch.Tensor  # float [B,1,28,28] in [0, 1]
    label: torch.Tensor  # long [B], -1 where unknown
    targets: dict[str, torch.Tensor]  # name -> float [B]


@runtime_checkable
class FactoredModel(Protocol):
    latent_slices: dict[str, slice]
    recon_logits: bool

    def forward(self, x: torch.Tensor) -> ModelOutput: ...

    def config(self) -> dict: ...


def check_model(model: nn.Module) -> None:
    """Raise a clear TypeError when `model` does not follow the forward protocol."""
    missing = [a for a in ("latent_slices", "recon_logits", "config") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"{type(model).__name__} does not follow the ACC forward protocol: missing {missing}")
    if "all" not in model.latent_slices:
        raise TypeError(f"{type(model).__name__}.latent_slices must contain 'all'")
    if "name" not in model.config():
        raise TypeError(f"{type(model).__name__}.config() must contain 'name' (its key in acc.models.MODELS)")


def recon_probabilities(model_or_flag: nn.Module | bool, recon: torch.Tensor) -> torch.Tensor:
    """The reconstruction as pixel values in [0, 1], whichever form the model returns."""
    logits = model_or_flag if isinstance(model_or_flag, bool) else model_or_flag.recon_logits
    return torch.sigmoid(recon) if logits else recon
