"""The forward protocol, the built-in models, and task gradient isolation, proven on gradients."""

from __future__ import annotations

import pytest
import torch

from acc.mnist import load_mnist
from acc.models import build_model
from acc.protocol import check_model
from acc.tasks.regression import RegressionTask
from tests.conftest import TINY_MODEL


@pytest.fixture(scope="module")
def batch(mnist_cache):
    digits = load_mnist(mnist_cache)
    b = digits.batch(torch.arange(16))
    b["targets"]["brightness"] = b["image"].mean(dim=(1, 2, 3))
    return b


@pytest.mark.parametrize("config", [TINY_MODEL, {"name": "conv_ae", "latent_dim": 12, "channels": 16}])
def test_models_follow_the_protocol_and_rebuild_from_config(config, batch):
    model = build_model(config)
    check_model(model)
    out = model(batch["image"])
    dim = model.latent_slices["all"].stop
    assert out["latent"].shape == (16, dim)
    assert out["recon"].shape == (16, 1, 28, 28)
    twin = build_model(model.config())
    assert twin.config() == model.config()
    assert [p.shape for p in twin.parameters()] == [p.shape for p in model.parameters()]


def test_factor_slot_names_slots_and_returns_attention(batch):
    model = build_model({**TINY_MODEL, "factors": {"digit": 6, "thickness": 2}})
    out = model(batch["image"])
    assert model.latent_slices == {"digit": slice(0, 6), "thickness": slice(6, 8), "all": slice(0, 8)}
    assert out["factors"]["digit"].shape == (16, 6)
    assert torch.equal(out["latent"][:, 6:8], out["factors"]["thickness"])
    attention = out["attention"]["thickness"]
    assert attention.shape == (16, 7, 7)
    assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(16), atol=1e-5)
    assert torch.allclose(out["latent_isolated"], out["latent"], atol=1e-6)


def _gradients(model, isolation, batch, latent="thickness"):
    task = RegressionTask(latent=latent, isolation=isolation, target="brightness")
    task.bind(model)
    model.zero_grad(set_to_none=True)
    task.loss(model(batch["image"]), batch).backward()
    touched = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    head_learns = all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.head.parameters())
    return touched, head_learns


def _groups(touched):
    return {
        "trunk": any(n.startswith(("encoder.", "position", "norm.", "to_key.", "to_value.")) for n in touched),
        "own_slot": any(n.startswith("slots.thickness.") for n in touched),
        "other_slots": any(n.startswith("slots.") and not n.startswith("slots.thickness.") for n in touched),
        "decoder": any(n.startswith("decoder.") for n in touched),
    }


def test_probe_isolation_teaches_only_the_head(batch):
    touched, head_learns = _gradients(build_model(TINY_MODEL), "probe", batch)
    assert head_learns and touched == set()


def test_slot_isolation_teaches_only_the_own_slot(batch):
    touched, head_learns = _gradients(build_model(TINY_MODEL), "slot", batch)
    assert head_learns
    assert _groups(touched) == {"trunk": False, "own_slot": True, "other_slots": False, "decoder": False}
    assert {"slots.thickness.query", "slots.thickness.mlp.0.weight"} <= touched


def test_shared_isolation_reaches_the_trunk_but_not_other_slots(batch):
    touched, head_learns = _gradients(build_model(TINY_MODEL), "shared", batch)
    assert head_learns
    assert _groups(touched) == {"trunk": True, "own_slot": True, "other_slots": False, "decoder": False}


def test_slot_isolation_falls_back_to_shared_without_latent_isolated(batch):
    model = build_model({"name": "conv_ae", "latent_dim": 12, "channels": 16})
    with pytest.warns(UserWarning, match="falls back to 'shared'"):
        touched, _ = _gradients(model, "slot", batch, latent="all")
    assert any(n.startswith("encoder.") for n in touched)
    assert not any(n.startswith("decoder.") for n in touched)
