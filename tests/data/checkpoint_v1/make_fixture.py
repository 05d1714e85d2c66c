"""How this fixture was made (run ONCE, with the code from before depth settings existed).

    .venv/bin/python tests/data/checkpoint_v1/make_fixture.py

Writes, with `acc.engine.checkpoint.write_checkpoint` (the real on-disk format, version 1):
  factor_slot/ and conv_ae/   checkpoint folders (weights.safetensors, optimizer.safetensors, meta.json)
  outputs.safetensors         each model's outputs (eval mode, no grad) on `fixed_input()`
  config.json                 both configs and the sums of those outputs (readable at a glance)

tests/test_expand.py rebuilds each model from its stored config with today's code, loads the
weights with strict=True and checks the outputs equal the stored ones. Do not re-run it with new
code: the point is that the files were written by the old code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "factor_slot": {"name": "factor_slot", "factors": ["digit", "thickness"], "slot_dim": 2,
                    "channels": 8, "hidden": 8},
    "conv_ae": {"name": "conv_ae", "latent_dim": 4, "channels": 8},
}


def fixed_input() -> torch.Tensor:
    """Two 28x28 images without any RNG: a ramp from 0 to 1."""
    return torch.linspace(0, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)


def flat_outputs(out: dict) -> dict[str, torch.Tensor]:
    """A model output flattened to 'key' / 'key.sub' -> tensor."""
    flat = {}
    for key, value in out.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: v.detach().contiguous().clone() for k, v in flat.items()}


def main() -> None:
    from acc.engine.checkpoint import write_checkpoint
    from acc.models import build_model

    outputs, sums = {}, {}
    for name, config in CONFIGS.items():
        shutil.rmtree(HERE / name, ignore_errors=True)
        torch.manual_seed(0)
        model = build_model(config).eval()
        weights = {f"model.{k}": v for k, v in model.state_dict().items()}
        write_checkpoint(HERE, name, weights, {}, {"parent": None, "step": 0, "model": model.config(),
                                                    "tasks": [], "optimizer": {"type": "Adam", "lr": 1e-3},
                                                    "metrics": {}})
        with torch.no_grad():
            flat = flat_outputs(model(fixed_input()))
        outputs.update({f"{name}/{k}": v for k, v in flat.items()})
        sums[name] = {k: float(v.double().sum()) for k, v in flat.items()}
    save_file(outputs, HERE / "outputs.safetensors")
    (HERE / "config.json").write_text(json.dumps(
        {"configs": CONFIGS, "input": "torch.linspace(0, 1, 2*28*28).reshape(2, 1, 28, 28)",
         "mode": "eval, torch.no_grad()", "output_sums": sums}, indent=2) + "\n")


if __name__ == "__main__":
    main()
