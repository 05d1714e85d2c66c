"""Model expansion as an engine command, a recipe step and an API route (M6): the live model grows,
tasks keep their heads, Adam keeps its state, a child checkpoint records it, training goes on."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import torch

from acc.engine import EngineConfig
from acc.engine.checkpoint import read_checkpoint
from acc.engine.recipes import run_recipe
from acc.engine.session import Session
from acc.models.expand import parameter_count
from acc.ui.client import TrainerClient, TrainerError

SMALL = {"name": "factor_slot", "factors": ["digit", "style"], "slot_dim": 4, "channels": 8, "hidden": 16}


@pytest.fixture
def small_config(tiny_config) -> EngineConfig:
    return replace(tiny_config, model=dict(SMALL))  # the tests' engine settings, a model that grows


@pytest.fixture
def trained(workspace, small_config):
    with Session.open(workspace.root, small_config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        engine.add_task("ClassificationTask", name="digit", latent="digit")
        engine.train(30, timeout=120)
        yield session


def adam_state(engine) -> dict[str, dict[str, torch.Tensor]]:
    names = engine._parameter_names()
    return {names[p]: {k: v.clone() for k, v in s.items()} for p, s in engine.optimizer.state.items()}


@pytest.mark.parametrize("where", ["encoder:0", "decoder:0", "slots:1"])
def test_identity_expansion_keeps_the_function_heads_and_adam_state(trained, where):
    engine = trained.engine
    base = engine.save_checkpoint("base")
    before_eval = engine.evaluate()
    heads = {t.task.name: t.task.head for t in engine.tasks.values() if t.task.head is not None}
    moments = adam_state(engine)
    params_before = parameter_count(engine.model)

    answer = engine.expand(where, "identity")

    after_eval = engine.evaluate()
    for task, values in before_eval.items():
        for key, value in values.items():
            assert after_eval[task][key] == pytest.approx(value, abs=1e-5), (task, key)
    # Heads are the same modules, with the same weights; the model is a new one.
    assert {t.task.name: t.task.head for t in engine.tasks.values() if t.task.head is not None} == heads
    carried = adam_state(engine)
    renamed = {k for k in carried if k.startswith("model.")}
    assert len(renamed) == len([k for k in moments if k.startswith("model.")])  # new layers: no state yet
    for name, state in moments.items():
        if name.startswith("task."):
            assert torch.equal(carried[name]["exp_avg"], state["exp_avg"])
    # Every moment of an existing parameter is found again, unchanged, under some name.
    old = sorted(float(s["exp_avg_sq"].sum()) for k, s in moments.items() if k.startswith("model."))
    new = sorted(float(s["exp_avg_sq"].sum()) for k, s in carried.items() if k.startswith("model."))
    assert old == new
    checkpoint = answer["checkpoint"]
    assert checkpoint["parent"] == base["id"] and checkpoint["step"] == base["step"] == engine.step
    meta = read_checkpoint(trained.store.checkpoint(checkpoint["id"])["path"]).meta
    expansion = meta["expansion"]
    assert expansion["where"] == where and expansion["init"] == "identity" and expansion["from"] == base["id"]
    assert expansion["params_before"] == params_before < expansion["params_after"] == parameter_count(engine.model)
    assert meta["model"] == engine.model.config() != trained.store.checkpoint(base["id"])["meta"]["model"]
    run = trained.store.run(engine.run_id)
    assert run["config"]["from_checkpoint"] == checkpoint["id"] and "+" + where in run["name"]
    engine.train(10, timeout=120)  # new parameters join Adam at their first step
    assert len(adam_state(engine)) > len(moments)


def test_random_expansion_changes_the_output_and_the_checkpoint_reloads(trained):
    engine = trained.engine
    engine.save_checkpoint("base")
    before = engine.evaluate()["reconstruction_task"]["loss"]
    answer = engine.expand("encoder:0", "random", seed=3)
    assert engine.evaluate()["reconstruction_task"]["loss"] != pytest.approx(before, abs=1e-4)
    fingerprint = engine.fingerprints()
    engine.train(5, timeout=120)
    engine.load_checkpoint(answer["checkpoint"]["id"])  # round trip: rebuilt from its own config
    assert engine.fingerprints() == fingerprint
    assert engine.model.config()["encoder_blocks"] == 1


def test_unsaved_training_is_kept_before_the_expansion(trained):
    engine = trained.engine
    answer = engine.expand("slots:1", "identity")
    assert answer["autosaved"] is not None and answer["autosaved"]["name"] == "autosave before expand at slots:1"
    assert answer["checkpoint"]["parent"] == answer["autosaved"]["id"]


def test_a_bad_place_changes_nothing(trained):
    engine = trained.engine
    engine.save_checkpoint("base")
    state, fingerprint, checkpoints = engine.state(), engine.fingerprints(), trained.store.checkpoints()
    with pytest.raises(ValueError, match="encoder:0"):  # the message lists the places
        engine.expand("nowhere:3", "identity")
    with pytest.raises(ValueError, match="identity"):
        engine.expand("encoder:0", "zeros")
    assert engine.state() == state and engine.fingerprints() == fingerprint
    assert trained.store.checkpoints() == checkpoints


def test_expansion_beside_live_training(trained):
    engine = trained.engine
    done = engine.start(200)
    answer = engine.expand("encoder:0", "identity")
    assert engine.state()["status"] == "running"  # training goes on, in the new run
    done.result(300)
    assert engine.step == 230 and answer["checkpoint"]["step"] < 230
    series = trained.store.query_metrics(engine.run_id, ["loss/digit"], max_points=10_000)
    assert series["loss/digit"]["step"][0] == answer["checkpoint"]["step"] + 1


def test_a_recipe_grows_the_fair_comparison_as_a_tree(workspace, small_config):
    with Session.open(workspace.root, small_config, watch=False) as session:
        result = run_recipe(session.engine, session.recipes, "expand_demo", {"base_steps": 20, "steps": 10})
        rows = {row["name"]: row for row in session.store.checkpoints()}
        base = rows["expand_base"]
        for name in ("expand_control", "expand_random", "expand_identity"):
            assert rows[name]["step"] == base["step"] + 10
        grown = [row for row in rows.values() if row["meta"].get("expansion")]
        assert sorted(row["meta"]["expansion"]["init"] for row in grown) == ["identity", "random"]
        assert all(row["parent"] == base["id"] for row in grown)
        assert rows["expand_random"]["parent"] == next(r["id"] for r in grown if r["meta"]["expansion"]["init"] == "random")
        assert rows["expand_control"]["parent"] == base["id"]
        assert result.steps == 20 + 3 * 10


# ---- the API --------------------------------------------------------------------------------------
@pytest.fixture
def api(trainer_factory, small_config):
    trainer = trainer_factory(config=small_config, tasks=["ReconstructionTask",
                                                          {"type": "ClassificationTask", "name": "digit", "latent": "digit"}])
    with TrainerClient(trainer.base_url) as client:
        yield trainer, client


def test_layers_and_expand_over_http(api):
    trainer, client = api
    layers = client.model_layers()
    assert {"encoder:0", "decoder:0", "slots:1"} <= {p["where"] for p in layers["points"]}
    assert layers["params"] == parameter_count(trainer.session.engine.model) and layers["layers"]
    point = next(p for p in layers["points"] if p["where"] == "slots:1")
    client.train("start", steps=5)
    client.save_checkpoint("base")  # waits for nothing: the step count is whatever it is by now
    answer = client.expand_model("slots:1", "identity")
    assert answer["checkpoint"]["expansion"]["params_after"] == layers["params"] + point["params"]
    assert client.model_layers()["params"] == layers["params"] + point["params"]
    assert answer["state"]["model"]["slot_layers"] == 3
    tree = {c["id"]: c for c in client.checkpoints()}
    assert tree[answer["checkpoint"]["id"]]["expansion"]["where"] == "slots:1"


@pytest.mark.parametrize("body", [{"where": "nowhere"}, {"where": "encoder:9"}, {"where": "encoder:0", "init": "zeros"},
                                  {"init": "identity"}, {"where": "encoder:0", "seed": -1},
                                  {"where": "encoder:0", "extra": 1}, {"where": 3}])
def test_bad_expansions_are_422_and_change_nothing(api, body):
    trainer, client = api
    before, checkpoints = client.model_layers(), client.checkpoints()
    response = httpx.post(f"{trainer.base_url}/api/model/expand", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert client.model_layers() == before and client.checkpoints() == checkpoints


def test_expansion_is_refused_while_a_recipe_runs(api):
    trainer, client = api
    job = client.run_recipe("expand_demo", {"base_steps": 2000, "steps": 10})
    try:
        with pytest.raises(TrainerError) as refused:
            client.expand_model("encoder:0")
        assert refused.value.status == 409 and "driving the engine" in str(refused.value.detail)
    finally:
        client.cancel_job(job["id"])
