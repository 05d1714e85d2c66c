"""Depth settings and model growth (acc.models.expand), on tiny models.

Proven here: the defaults are today's architecture (an old checkpoint loads strictly with the same
outputs), identity growth keeps every output in train and eval mode at every place, every old
tensor is carried over by the name map, the new layer learns, and bad requests fail clearly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from acc.engine.checkpoint import read_checkpoint
from acc.models import build_model
from acc.models.expand import ExpansionError, expand, parameter_count

FIXTURE = Path(__file__).parent / "data" / "checkpoint_v1"

SLOT = {"name": "factor_slot", "factors": ["digit", "thickness"], "slot_dim": 2, "channels": 8, "hidden": 8}
SLOT_DEEP = {**SLOT, "encoder_blocks": 1, "decoder_blocks": 1, "slot_layers": 3}
SLOT_ONE_LAYER = {**SLOT, "slot_layers": 1}
AE = {"name": "conv_ae", "latent_dim": 4, "channels": 8}
AE_DEEP = {**AE, "encoder_blocks": 2, "decoder_blocks": 1}
CONFIGS = {"slot": SLOT, "slot_deep": SLOT_DEEP, "slot_one_layer": SLOT_ONE_LAYER, "ae": AE, "ae_deep": AE_DEEP}


def make(config: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(config)


def cases() -> list:
    """(config key, where) for every expansion point of every test config."""
    return [pytest.param(key, p["where"], id=f"{key}-{p['where']}")
            for key, config in CONFIGS.items() for p in build_model(config).expansion_points()]


def point(model: nn.Module, where: str) -> dict:
    return next(p for p in model.expansion_points() if p["where"] == where)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 28, 28, generator=generator)


def flat(out: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a model output: 'latent', 'factors.digit', 'attention.thickness', ..."""
    result = {}
    for key, value in out.items():
        if isinstance(value, dict):
            result.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            result[key] = value
    return result


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- defaults: today's configs and checkpoints load unchanged ------------------------------------

@pytest.mark.parametrize("name", ["factor_slot", "conv_ae"])
def test_old_checkpoint_loads_strictly_with_identical_outputs(name):
    stored = json.loads((FIXTURE / "config.json").read_text())
    outputs = load_file(FIXTURE / "outputs.safetensors")
    data = read_checkpoint(FIXTURE / name)  # the real reader: format and sha256 checked
    x = torch.linspace(0, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    # Both the config as written by hand and the one the old model's config() saved.
    for config in (stored["configs"][name], data.meta["model"]):
        model = build_model(config).eval()
        model.load_state_dict(data.model_state(), strict=True)
        with torch.no_grad():
            out = flat(model(x))
        expected = {k.split("/", 1)[1]: v for k, v in outputs.items() if k.startswith(f"{name}/")}
        assert set(out) == set(expected)
        for key, value in out.items():
            assert torch.allclose(value, expected[key], atol=1e-6, rtol=0), key
            assert float(value.double().sum()) == pytest.approx(stored["output_sums"][name][key], abs=1e-4)


@pytest.mark.parametrize("name", ["factor_slot", "conv_ae"])
def test_default_config_has_todays_state_dict_keys_and_initial_weights(name):
    stored = json.loads((FIXTURE / "config.json").read_text())["configs"][name]
    old = read_checkpoint(FIXTURE / name).model_state()
    model = make(stored)  # seeded as the fixture was: no new draws when there are no new layers
    assert set(model.state_dict()) == set(old)  # safetensors stores keys sorted: compare as sets
    for key, value in model.state_dict().items():
        assert torch.equal(value, old[key]), key


def test_configs_without_depth_keys_get_the_defaults_and_config_has_them():
    slot, ae = build_model(SLOT).config(), build_model(AE).config()
    assert (slot["encoder_blocks"], slot["decoder_blocks"], slot["slot_layers"]) == (0, 0, 2)
    assert (ae["encoder_blocks"], ae["decoder_blocks"]) == (0, 0)
    for config in (SLOT_DEEP, AE_DEEP, SLOT_ONE_LAYER):
        model = build_model(config)
        twin = build_model(model.config())
        assert twin.config() == model.config()
        assert list(twin.state_dict()) == list(model.state_dict())


def test_depth_settings_build_the_layers_they_name():
    model = build_model(SLOT_DEEP)
    assert len(model.encoder_blocks) == 1 and len(model.decoder_blocks) == 1
    linears = [m for m in model.slots["digit"].mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 8), (8, 8), (8, 2)]
    one = build_model(SLOT_ONE_LAYER).slots["digit"].mlp
    assert len(one) == 1 and (one[0].in_features, one[0].out_features) == (8, 2)


@pytest.mark.parametrize("bad", [
    {"encoder_blocks": -1}, {"decoder_blocks": -2}, {"slot_layers": 0}, {"encoder_blocks": 1.5},
    {"slot_layers": True}, {"decoder_blocks": "1"},
])
def test_bad_depth_settings_are_refused_clearly(bad):
    (key, value), = bad.items()
    with pytest.raises(ValueError, match=key):
        build_model({**SLOT, **bad})
    if key != "slot_layers":
        with pytest.raises(ValueError, match=key):
            build_model({**AE, **bad})


# ---- identity growth keeps the function ----------------------------------------------------------

@pytest.mark.parametrize("key,where", cases())
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_identity_growth_keeps_every_output(key, where, train, images):
    old = make(CONFIGS[key]).train(train)
    new, _ = expand(old, where, "identity", seed=3)
    assert new.training is train and old.training is train
    before, after = flat(old(images)), flat(new(images))
    assert set(before) == set(after) and "recon" in after
    for name, value in before.items():
        assert after[name].shape == value.shape, name
        assert torch.allclose(after[name], value, atol=1e-5, rtol=0), name


@pytest.mark.parametrize("key,where", cases())
def test_random_growth_changes_the_recon_deterministically(key, where, images):
    old = make(CONFIGS[key]).eval()
    with torch.no_grad():
        recon = old(images)["recon"]
        a = expand(old, where, "random", seed=5)[0](images)["recon"]
        b = expand(old, where, "random", seed=5)[0](images)["recon"]
        c = expand(old, where, "random", seed=6)[0](images)["recon"]
    assert not torch.allclose(a, recon, atol=1e-4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---- tensors carried by the name map -------------------------------------------------------------

@pytest.mark.parametrize("key,where", cases())
@pytest.mark.parametrize("init", ["identity", "random"])
def test_every_old_tensor_is_carried_and_only_the_new_layer_is_new(key, where, init):
    old = make(CONFIGS[key])
    kept = state(old)
    at = point(old, where)
    new, renamed = expand(old, where, init)
    old_params, new_params = dict(old.named_parameters()), dict(new.named_parameters())
    assert set(renamed) == set(old_params)
    assert len(set(renamed.values())) == len(renamed)
    for old_name, new_name in renamed.items():
        assert torch.equal(new_params[new_name], old_params[old_name]), (old_name, new_name)
        assert new_params[new_name] is not old_params[old_name]
    fresh = set(new_params) - set(renamed.values())
    assert fresh and sum(new_params[n].numel() for n in fresh) == at["params"]
    assert parameter_count(new) == parameter_count(old) + at["params"]
    assert all(torch.equal(v, kept[k]) for k, v in old.state_dict().items())  # the old model untouched
    assert list(old.state_dict()) == list(kept)
    # The new layer sits where the point says: fresh names under the new block / slot layer.
    side, k = where.split(":")
    prefixes = ([f"{side}_blocks.{k}."] if side != "slots"
                else [f"slots.{s}.mlp.{2 * int(k)}." for s in old.slots])
    assert all(any(n.startswith(p) for p in prefixes) for n in fresh)
    assert all(any(n.startswith(p) for n in fresh) for p in prefixes)


def test_identity_init_values_follow_the_growth_rules():
    new, _ = expand(make(SLOT_DEEP), "encoder:0", "identity", seed=0)
    block = new.encoder_blocks[0]
    assert torch.count_nonzero(block.conv2.weight) == 0 and torch.count_nonzero(block.conv2.bias) == 0
    assert torch.count_nonzero(block.conv1.weight) > 0  # only the last layer zero
    new, _ = expand(make(SLOT_DEEP), "slots:2", "identity")
    for slot in new.slots.values():
        assert torch.equal(slot.mlp[4].weight, torch.eye(8)) and torch.count_nonzero(slot.mlp[4].bias) == 0
        assert isinstance(slot.mlp[3], nn.ReLU) and isinstance(slot.mlp[5], nn.ReLU)


@pytest.mark.parametrize("key,where", cases())
def test_grown_model_round_trips_through_its_config(key, where, images):
    old = make(CONFIGS[key])
    new, _ = expand(old, where, "random", seed=1)
    twin = build_model(new.config())
    twin.load_state_dict(new.state_dict(), strict=True)
    assert parameter_count(twin) == parameter_count(old) + point(old, where)["params"]
    new.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(images)["recon"], new(images)["recon"])


def test_growth_leaves_the_global_rng_alone_and_grows_repeatedly(images):
    model = make(SLOT)
    rng = torch.random.get_rng_state()
    for where in ("encoder:0", "encoder:1", "decoder:0", "slots:1", "slots:2", "encoder:1"):
        model, _ = expand(model, where, "identity", seed=2)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert {k: model.config()[k] for k in ("encoder_blocks", "decoder_blocks", "slot_layers")} == \
        {"encoder_blocks": 3, "decoder_blocks": 1, "slot_layers": 4}
    with torch.no_grad():
        assert torch.allclose(model.eval()(images)["recon"], make(SLOT).eval()(images)["recon"], atol=1e-5)


def test_growth_keeps_dtype_and_frozen_parameters(images):
    old = make(SLOT_DEEP).double()
    old.encoder.requires_grad_(False)
    new, renamed = expand(old, "decoder:1", "identity")
    assert {p.dtype for p in new.parameters()} == {torch.float64}
    assert all(not p.requires_grad for n, p in new.named_parameters() if n.startswith("encoder."))
    assert all(p.requires_grad for n, p in new.named_parameters() if not n.startswith("encoder."))
    x = images.double()
    assert torch.allclose(new(x)["recon"], old(x)["recon"], atol=1e-10)


# ---- the new layer learns ------------------------------------------------------------------------

@pytest.mark.parametrize("key,where", cases())
def test_identity_growth_trains_every_new_parameter(key, where, images):
    old = make(CONFIGS[key])
    new, renamed = expand(old, where, "identity")
    fresh = {n: p for n, p in new.named_parameters() if n not in set(renamed.values())}
    optimizer = torch.optim.Adam(new.parameters(), lr=1e-3)

    def backward() -> None:
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(new(images)["recon"], images).backward()

    backward()
    optimizer.step()
    backward()
    for name, param in fresh.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("where", ["encoder:0", "encoder:1"])
def test_attention_keeps_its_7x7_shape_after_encoder_growth(where, images):
    new, _ = expand(make(SLOT_DEEP), where, "random")
    attention = new(images)["attention"]
    assert {name: tuple(a.shape) for name, a in attention.items()} == {"digit": (6, 7, 7), "thickness": (6, 7, 7)}


# ---- the places, and what is refused -------------------------------------------------------------

def test_expansion_points_list_every_place():
    wheres = lambda config: [p["where"] for p in build_model(config).expansion_points()]  # noqa: E731
    assert wheres(SLOT) == ["encoder:0", "decoder:0", "slots:1"]
    assert wheres(SLOT_DEEP) == ["encoder:0", "encoder:1", "decoder:0", "decoder:1", "slots:1", "slots:2"]
    assert wheres(SLOT_ONE_LAYER) == ["encoder:0", "decoder:0"]  # no ReLU to sit behind
    assert wheres(AE_DEEP) == ["encoder:0", "encoder:1", "encoder:2", "decoder:0", "decoder:1"]
    for p in build_model(SLOT).expansion_points():
        assert set(p) == {"where", "kind", "shape", "params", "inits"}
        assert p["inits"] == ["identity", "random"] and isinstance(p["kind"], str) and p["kind"]
    slots = point(build_model(SLOT), "slots:1")
    assert slots["shape"] == [8] and slots["params"] == 2 * (8 * 8 + 8)
    block = point(build_model(AE), "encoder:0")
    assert block["shape"] == [8, 7, 7] and block["params"] == 2 * (8 * 8 * 9 + 8)


def test_unknown_where_lists_the_valid_places():
    with pytest.raises(ExpansionError, match=r"'encoder:0'.*'slots:1'") as err:
        expand(make(SLOT), "encoder:5", "identity")
    assert isinstance(err.value, ValueError)
    with pytest.raises(ExpansionError, match="'decoder:0'"):
        expand(make(AE), "slots:1", "identity")


def test_slots_point_absent_with_a_single_layer_mlp():
    with pytest.raises(ExpansionError, match="no expansion point 'slots:1'"):
        expand(make(SLOT_ONE_LAYER), "slots:1", "identity")


def test_unknown_init_lists_the_valid_inits():
    with pytest.raises(ExpansionError, match=r"'identity', 'random'"):
        expand(make(SLOT), "encoder:0", "zeros")


def test_a_model_without_expansion_points_cannot_grow():
    class Plain(nn.Module):
        def config(self) -> dict:
            return {"name": "plain"}

    with pytest.raises(ExpansionError, match="cannot grow"):
        expand(Plain(), "encoder:0", "identity")


# ---- the layer table -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(CONFIGS))
def test_layers_count_every_parameter_once_in_forward_order(key):
    model = make(CONFIGS[key])
    rng = torch.random.get_rng_state()
    rows = model.layers()
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(set(r) == {"name", "type", "shape", "params"} for r in rows)
    assert sum(r["params"] for r in rows) == parameter_count(model)
    names = [r["name"] for r in rows]
    assert names[0] == "encoder.0" or names[0] == "encoder.0.0"
    assert names[-1] == "decoder.7"
    shapes = {r["name"]: r["shape"] for r in rows}
    assert shapes["decoder.7"] == [1, 28, 28]
    for i in range(CONFIGS[key].get("encoder_blocks", 0)):
        assert shapes[f"encoder_blocks.{i}"] == [8, 7, 7]
    blocks = [n for n in names if n.startswith(("encoder_blocks", "decoder_blocks"))]
    assert all(next(r for r in rows if r["name"] == n)["type"] == "ResidualBlock" for n in blocks)


def test_layers_of_factor_slot_in_forward_order():
    rows = make(SLOT_DEEP).layers()
    names = [r["name"] for r in rows]
    order = ["encoder.6", "encoder_blocks.0", "position", "norm", "to_key", "to_value", "slots.digit.query",
             "slots.digit.mlp.0", "slots.digit.mlp.2", "slots.digit.mlp.4", "slots.thickness.query",
             "decoder.0", "decoder_blocks.0", "decoder.3"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    shapes = {r["name"]: r["shape"] for r in rows}
    assert shapes["slots.digit.mlp.4"] == [2] and shapes["to_key"] == [49, 8] and shapes["decoder.0"] == [392]


def test_growth_keeps_the_device_and_draws_as_on_the_cpu(images):
    """On the accelerator where there is one (CUDA), else on the CPU: the same seeded weights, on
    the model's own device, and the CUDA generator untouched."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = make(SLOT_DEEP)
    other = make(SLOT_DEEP).to(device)
    cuda_rng = torch.cuda.get_rng_state() if device == "cuda" else None
    new_cpu, _ = expand(cpu, "encoder:1", "random", seed=4)
    new_other, _ = expand(other, "encoder:1", "random", seed=4)
    if cuda_rng is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert {p.device.type for p in new_other.parameters()} == {device}
    for (name, a), (_, b) in zip(new_cpu.state_dict().items(), new_other.state_dict().items()):
        assert torch.equal(a, b.cpu()), name
    assert sum(r["params"] for r in new_other.layers()) == parameter_count(new_other)
