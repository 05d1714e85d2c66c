"""Grow a model by one layer without starting over: `expand(model, where, init, seed)`.

The new model is built by `build_model` from the old model's config with one depth setting raised
by one (`encoder_blocks`, `decoder_blocks` or `slot_layers`), so a checkpoint of it rebuilds like
any other. Every existing tensor is copied into it under its (possibly shifted) name; only the new
layer is initialised, by `init`:

- `"identity"`: function-preserving growth, the new model computes exactly what the old one did.
  This is Net2Net's "deeper" operator (Chen et al. 2016, an identity-initialised layer), the
  growth operators of staged training (Shen et al. 2022, a new residual block whose output is
  zero), and GradMax's rule (Evci et al. 2022) of zeroing only the *outgoing* weights of new
  units, so the function is kept while the gradient still reaches the new weights.
  A residual block gets a default-initialised `conv1` and an all-zero `conv2` (weight and bias),
  so its branch adds 0. A new hidden layer of a slot MLP gets weight = eye, bias = 0.
- `"random"`: PyTorch's default initialisation of the new layer (the function changes).

Both draw any random numbers from the CPU generator seeded with `seed`, inside
`torch.random.fork_rng`, so the result is deterministic and the caller's RNG stream is untouched.

Pitfalls handled:
- Zeroing a whole new branch (conv1 AND conv2) also keeps the function, but then every gradient
  inside it is zero for ever (each weight's gradient goes through the other zero weight): the
  block would never learn. Only the last layer is zeroed; conv2's gradient is non-zero from the
  first step, and conv1's once conv2 has moved.
- An eye layer is an identity only on what a ReLU passes unchanged: the new slot layer goes right
  AFTER an existing ReLU (its input is >= 0, so eye(x) >= 0 and the ReLU after it is a no-op).
  Placed before a ReLU, or on a single-Linear slot MLP, it would cut negative values; so the
  model offers no such place (see `FactorSlotAutoencoder.expansion_points`).
- No normalisation in the new layer: a norm is an identity in at most one of train/eval modes.
- Inserting a layer shifts the indices of the ones after it (`encoder_blocks.1` -> `.2`,
  `slots.x.mlp.2` -> `.4`): tensors are copied by the returned name map, never matched by
  position, and the map lets an optimizer carry its state across.
- The old model is not modified; the new one has its device, dtype and train/eval mode. The new
  layer is initialised on the CPU before moving, so a seed gives the same weights on any device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from acc.models import build_model
from acc.models.autoencoder import ResidualBlock

INITS = ("identity", "random")


class ExpansionError(ValueError):
    """A model cannot grow as asked: no such place or init, or a model that cannot grow at all."""


def parameter_count(model: nn.Module) -> int:
    """Number of parameter elements (a shared parameter counted once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class _Plan:
    config: dict  # the grown model's config
    rename: Callable[[str], str]  # old state-dict key -> new key
    new_modules: list[str]  # the new layer's modules (one per slot for "slots:K")


def _shift(prefix: str, start: int, by: int) -> Callable[[str], str]:
    """Rename `<prefix><i>...` to `<prefix><i + by>...` for i >= start; other names stay."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)(?=\.|$)")

    def rename(name: str) -> str:
        match = pattern.match(name)
        if match is None or int(match.group(1)) < start:
            return name
        return f"{prefix}{int(match.group(1)) + by}{name[match.end():]}"

    return rename


def _plan(model: nn.Module, where: str) -> _Plan:
    side, k = where.split(":")
    k = int(k)
    config = model.config()
    if side in ("encoder", "decoder"):  # a residual block at position k of `<side>_blocks`
        key = f"{side}_blocks"
        return _Plan({**config, key: config[key] + 1}, _shift(f"{key}.", k, 1), [f"{key}.{k}"])
    if side == "slots":  # Linear(h, h) + ReLU after the k-th ReLU (index 2k - 1), i.e. at index 2k
        renames = [_shift(f"slots.{name}.mlp.", 2 * k, 2) for name in model.slots]

        def rename(name: str) -> str:
            for one in renames:  # at most one of them matches a name
                name = one(name)
            return name

        return _Plan({**config, "slot_layers": config["slot_layers"] + 1}, rename,
                     [f"slots.{name}.mlp.{2 * k}" for name in model.slots])
    raise ExpansionError(f"no growth rule for {where!r}")  # a point the model lists but this module lacks


def _initialise(module: nn.Module, init: str) -> None:
    """Initialise one new module in place (under the caller's seeded RNG)."""
    with torch.no_grad():
        if isinstance(module, ResidualBlock):
            module.conv1.reset_parameters()
            if init == "identity":  # only the LAST layer zero, so the block still learns
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
            else:
                module.conv2.reset_parameters()
        elif isinstance(module, nn.Linear):
            if init == "identity":
                # Sits right after a ReLU: its input is >= 0, so eye passes it and the ReLU after it
                # passes it too. (Before a ReLU an eye layer would not be an identity.)
                module.weight.copy_(torch.eye(module.out_features, module.in_features))
                module.bias.zero_()
            else:
                module.reset_parameters()
        else:
            raise ExpansionError(f"do not know how to initialise a new {type(module).__name__}")


def expand(model: nn.Module, where: str, init: str, seed: int = 0) -> tuple[nn.Module, dict[str, str]]:
    """A new model grown by one layer at `where` (one of `model.expansion_points()`), the new layer
    initialised by `init` ("identity" or "random"), and {old parameter name: new name} for every
    parameter of the old model. The old model is left as it was."""
    if not callable(getattr(model, "expansion_points", None)):
        raise ExpansionError(f"{type(model).__name__} cannot grow: it has no expansion_points()")
    points = {p["where"]: p for p in model.expansion_points()}
    if where not in points:
        valid = ", ".join(repr(w) for w in points) or "none"
        raise ExpansionError(f"{type(model).__name__} has no expansion point {where!r}; valid places: {valid}")
    point = points[where]
    if init not in point["inits"]:
        raise ExpansionError(f"unknown init {init!r} for {where!r}; valid inits: "
                             f"{', '.join(repr(i) for i in point['inits'])}")
    plan = _plan(model, where)

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    # build_model draws the whole model's init, all overwritten below: forked, so those draws do
    # not move the caller's RNG. Seeding only the CPU generator (the CPU half of torch.manual_seed)
    # leaves the accelerators' generators alone; the new layer is drawn on the CPU anyway.
    with torch.random.fork_rng(devices=[]):
        grown = build_model(plan.config).to(dtype=dtype)
        torch.default_generator.manual_seed(seed)
        for name in plan.new_modules:
            _initialise(grown.get_submodule(name), init)
    grown.to(device)

    new_state = grown.state_dict()  # tensors sharing storage with the grown model's
    old_state = model.state_dict()
    copied = set()
    with torch.no_grad():
        for old_key, tensor in old_state.items():
            new_key = plan.rename(old_key)
            if new_key not in new_state or new_state[new_key].shape != tensor.shape:
                raise ExpansionError(f"growing at {where!r}: {old_key!r} has no place in the grown model")
            new_state[new_key].copy_(tensor)
            copied.add(new_key)
    # Sanity: exactly the new layer's tensors are left uncopied, and they add what the point says.
    fresh = set(new_state) - copied
    expected = {f"{m}.{k}" for m in plan.new_modules for k in grown.get_submodule(m).state_dict()}
    if fresh != expected or parameter_count(grown) - parameter_count(model) != point["params"]:
        raise ExpansionError(f"growing at {where!r} did not add exactly the new layer ({sorted(fresh)})")

    renamed = {name: plan.rename(name) for name, _ in model.named_parameters()}
    new_params = dict(grown.named_parameters())
    for name, param in model.named_parameters():
        new_params[renamed[name]].requires_grad_(param.requires_grad)  # a frozen part stays frozen
    grown.train(model.training)
    return grown, renamed
