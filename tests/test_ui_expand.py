"""The model panel's [Expand Model] dialog through NiceGUI's simulated user against a real trainer,
and the pure parts: the texts it shows, the expansion node's caption and the chart markers found
along a run's lineage. What the page did is checked on the trainer."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from acc.ui.client import TrainerClient, TrainerError
from acc.ui.expand_dialog import (INITS, expansion_markers, marker_label, params_change, point_label, refusal,
                                  shape_text)
from acc.ui.tree import grown_caption, tree_nodes
from tests.test_ui import dashboard_and_link, eventually, no_error_logs  # noqa: F401 (an autouse fixture)

SMALL_MODEL = {"name": "factor_slot", "factors": ["digit", "style"], "slot_dim": 4, "channels": 8, "hidden": 16}
DIGIT = {"type": "ClassificationTask", "name": "digit", "latent": "digit"}
GROWN = {"where": "slots:1", "init": "identity", "seed": 7, "params_before": 28073, "params_after": 30185,
         "from": "a", "step": 40}


# ---- pure logic ------------------------------------------------------------------------------------
def test_the_dialog_texts():
    assert shape_text([16, 7, 7]) == "16×7×7" and shape_text(None) == "—" and shape_text([]) == "—"
    assert params_change(28073, 2112) == "parameters: 28,073 → 30,185 (+2,112)"
    assert params_change(28073, None) == "parameters: 28,073"
    point = {"where": "slots:1", "kind": "hidden layer", "shape": [16], "params": 544, "inits": ["identity"]}
    assert point_label(point) == "slots:1 · hidden layer · 16 · +544 params"
    assert marker_label(GROWN) == "+slots:1 (identity)"
    assert set(INITS) == {"identity", "random"}
    assert refusal(TrainerError(409, "a recipe is running")) == "the trainer refused (409): a recipe is running"
    assert refusal(TrainerError(422, [{"msg": "bad where"}, {"msg": "bad init"}])).endswith("bad where; bad init")


def test_an_expansion_node_says_where_it_grew():
    assert grown_caption(GROWN) == "grown at slots:1 (identity) 28,073 → 30,185 params"
    assert grown_caption(None) == ""
    rows = [{"id": "a", "name": "base", "parent": None, "step": 40, "branch": "main", "metrics": {}},
            {"id": "b", "name": "base +slots:1", "parent": "a", "step": 40, "branch": "main", "metrics": {},
             "expansion": GROWN}]
    root = tree_nodes(rows)[0]
    assert root["caption"] == "main"
    assert root["children"][0]["caption"] == "main · grown at slots:1 (identity) 28,073 → 30,185 params"


def test_markers_follow_the_shown_runs_lineage():
    later = {**GROWN, "where": "encoder:0", "init": "random", "step": 90}
    checkpoints = [{"id": "a", "parent": None, "step": 40},
                   {"id": "b", "parent": "a", "step": 40, "expansion": GROWN},
                   {"id": "c", "parent": "b", "step": 90, "expansion": later},
                   {"id": "other", "parent": None, "step": 10, "expansion": {**GROWN, "step": 10}}]
    runs = [{"id": 1, "config": {}},
            {"id": 2, "config": {"from_checkpoint": "b", "expansion": GROWN}},
            {"id": 3, "config": {"from_checkpoint": "c", "expansion": later}},
            {"id": 4, "config": {"continues": {"run_id": 3, "step": 120}}},  # a restart after a crash
            {"id": 5, "config": {"from_checkpoint": "a"}}]
    first, second = {"step": 40, "label": "+slots:1 (identity)"}, {"step": 90, "label": "+encoder:0 (random)"}
    assert expansion_markers(runs, checkpoints, 1) == []
    assert expansion_markers(runs, checkpoints, 2) == [first]
    assert expansion_markers(runs, checkpoints, 3) == [first, second]
    assert expansion_markers(runs, checkpoints, 4) == [first, second]
    assert expansion_markers(runs, checkpoints, 5) == []  # a fork from before the expansion
    assert expansion_markers(runs, [], 3) == [second]  # its checkpoints deleted: the run still says
    assert expansion_markers(runs, checkpoints, None) == [] and expansion_markers([], [], 7) == []
    loop = [{"id": 1, "config": {"continues": {"run_id": 2}}}, {"id": 2, "config": {"continues": {"run_id": 1}}}]
    assert expansion_markers(loop, [], 1) == []  # bad data ends, never loops


# ---- the page against a real trainer ----------------------------------------------------------------
@pytest.fixture
def small_trainer(trainer_factory, tiny_config):
    return trainer_factory(tasks=["ReconstructionTask", DIGIT],
                           config=dataclasses.replace(tiny_config, model=dict(SMALL_MODEL)))


def dialog_parts(user) -> dict:
    """The dialog's (visible) elements by marker."""
    return {name: user.find(marker=name).elements.pop()
            for name in ("expand-where", "expand-init", "expand-params", "confirm-expand")}


@pytest.mark.asyncio
async def test_expanding_from_the_dialog_creates_the_node_and_shows_the_counts(small_trainer):
    with TrainerClient(small_trainer.base_url) as client:
        await asyncio.to_thread(client.train, "start", 3)
        await eventually(lambda: client.state()["step"] == 3 and client.state()["status"] == "idle")
        layers = await asyncio.to_thread(client.model_layers)
        async with dashboard_and_link(small_trainer.base_url) as (user, link):
            await user.should_see(f"factor_slot · {layers['params']:,} parameters", retries=100)
            user.find(marker="open-expand").click()
            await user.should_see(marker="expand-layers")
            await user.should_see(f"factor_slot · {layers['params']:,} parameters · {len(layers['layers'])} layers",
                                  retries=100)
            dialog = dialog_parts(user)
            point = next(p for p in layers["points"] if p["where"] == "slots:1")
            assert set(dialog["expand-where"].options) == {p["where"] for p in layers["points"]}
            dialog["expand-where"].set_value("slots:1")
            assert dialog["expand-params"].text == params_change(layers["params"], point["params"])
            assert dialog["expand-init"].value == "identity" and dialog["confirm-expand"].enabled
            user.find(marker="confirm-expand").click()
            await user.should_see("saved as checkpoint", retries=100)  # the notification
            grown = await eventually(lambda: [c for c in client.checkpoints() if c.get("expansion")])
            assert grown[0]["expansion"]["where"] == "slots:1"
            assert grown[0]["expansion"]["params_after"] == layers["params"] + point["params"]
            await user.should_see(f"{layers['params'] + point['params']:,} parameters", retries=100)  # the panel


@pytest.mark.asyncio
async def test_a_model_with_nowhere_to_grow_says_so_and_offers_no_expand(small_trainer):
    async with dashboard_and_link(small_trainer.base_url) as (user, link):
        await user.should_see(marker="open-expand", retries=100)
        link.client.model_layers = lambda: {"points": [], "params": 100, "layers": [], "model": {"name": "plain"}}
        user.find(marker="open-expand").click()
        await user.should_see("This model has no places to grow", retries=100)
        dialog = dialog_parts(user)
        assert not dialog["confirm-expand"].enabled and dialog["expand-where"].options == {}
        assert dialog["expand-params"].text == "parameters: 100"


@pytest.mark.asyncio
async def test_a_place_the_trainer_does_not_know_is_refused_in_the_dialog(small_trainer):
    with TrainerClient(small_trainer.base_url) as client:
        real = await asyncio.to_thread(client.model_layers)
        async with dashboard_and_link(small_trainer.base_url) as (user, link):
            await user.should_see(marker="open-expand", retries=100)
            # A place that is gone by the time [Expand] is pressed (another tab grew the model since).
            gone = {**real["points"][0], "where": "slots:9"}
            link.client.model_layers = lambda: {**real, "points": [*real["points"], gone]}
            user.find(marker="open-expand").click()
            await user.should_see(marker="expand-layers")
            await eventually(lambda: "slots:9" in user.find(marker="expand-where").elements.pop().options)
            user.find(marker="expand-where").elements.pop().set_value("slots:9")
            user.find(marker="confirm-expand").click()
            await user.should_see("the trainer refused (422)", retries=100)
            await user.should_see(marker="expand-layers")  # the dialog stays open
            assert user.find(marker="confirm-expand").elements.pop().enabled
            assert not any(c.get("expansion") for c in await asyncio.to_thread(client.checkpoints))
            assert (await asyncio.to_thread(client.model_layers))["params"] == real["params"]
