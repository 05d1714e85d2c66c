"""Built-in models and `build_model(config)`, the inverse of `model.config()`.

A model class joins `MODELS` with `@register_model("name")`; its `config()` returns
`{"name": "name", **constructor_kwargs}` so any checkpoint can rebuild it.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        return cls

    return add


def build_model(config: dict) -> nn.Module:
    """Rebuild a model from its `config()`: `{"name": ..., **kwargs}`."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name](**config)


# Importing the modules registers the built-ins.
from acc.models import autoencoder, factor_slot  # noqa: E402,F401
