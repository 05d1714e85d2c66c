"""[Expand Model] in a real browser (Debian's chromium, driven by Playwright) against a real trainer:
the dialog lists the layers and the places to grow with their parameter counts, confirming grows
the live model into a new node of the tree, and every chart marks the step where it grew; while a
recipe drives the trainer, the refusal (409) shows in the dialog and nothing is created. No fixed
sleeps: Playwright waits for page conditions, `eventually` for the trainer's."""

from __future__ import annotations

import dataclasses
import re

import pytest
from playwright.sync_api import Page, expect

from acc.ui.client import TrainerClient
from acc.ui.expand_dialog import marker_label, params_change, point_label, shape_text
from acc.ui.tree import grown_caption
from tests.test_browser import (WAIT_MS, browser, charts, eventually, page, run_dashboard_process,  # noqa: F401
                                wait_for_chart)

SMALL_MODEL = {"name": "factor_slot", "factors": ["digit", "style"], "slot_dim": 4, "channels": 8, "hidden": 16}
DIGIT = {"type": "ClassificationTask", "name": "digit", "latent": "digit"}
WHERE = "slots:1"
BASE_STEPS = 20


@pytest.fixture
def small(trainer_factory, tiny_config):
    """A trainer of a small two-slot model that has trained `BASE_STEPS` steps (unsaved), a client
    to it and a dashboard's URL."""
    trainer = trainer_factory(tasks=["ReconstructionTask", DIGIT],
                              config=dataclasses.replace(tiny_config, model=dict(SMALL_MODEL)))
    with TrainerClient(trainer.base_url) as client, run_dashboard_process(trainer.base_url) as url:
        client.train("start", steps=BASE_STEPS)
        eventually(lambda: (s := client.state())["step"] == BASE_STEPS and s["status"] == "idle")
        yield trainer, client, url


def open_dialog(page: Page, layers: dict) -> None:
    """Open [Expand Model] and wait until it shows the model's layers and places."""
    page.locator('[data-role="open-expand"]').click()
    expect(page.locator('[data-role="expand-layers"] tbody tr')).to_have_count(len(layers["layers"]), timeout=WAIT_MS)
    expect(page.get_by_role("radio", name=point_label(layers["points"][0]))).to_be_visible(timeout=WAIT_MS)


def choose(page: Page, where: str, init: str) -> None:
    page.get_by_role("radio", name=re.compile(f"^{re.escape(where)} · ")).click()
    page.get_by_role("radio", name=re.compile(f"^{init} — ")).click()


def test_expanding_from_the_dialog_grows_a_node_and_marks_the_charts(small, page):
    trainer, client, url = small
    layers = client.model_layers()
    point = next(p for p in layers["points"] if p["where"] == WHERE)
    page.goto(url)
    wait_for_chart(page, "loss/total", f"lastStep === {BASE_STEPS}")
    expect(page.locator('[data-role="model-summary"]')).to_have_text(
        f"factor_slot · {layers['params']:,} parameters", timeout=WAIT_MS)

    open_dialog(page, layers)
    rows = page.locator('[data-role="expand-layers"] tbody tr')
    for i, layer in enumerate(layers["layers"]):  # name, type, shape, params, in the model's order
        expect(rows.nth(i).locator("td")).to_have_text(
            [layer["name"], layer["type"], shape_text(layer["shape"]), f"{layer['params']:,}"])
    for other in layers["points"]:  # each place with what it inserts, its shape and the parameters it adds
        expect(page.get_by_role("radio", name=point_label(other))).to_be_visible()
    count = page.locator('[data-role="expand-params"]')
    choose(page, WHERE, "random")
    expect(count).to_have_text(params_change(layers["params"], point["params"]))
    expect(page.get_by_text("the loss jumps, then recovers")).to_be_visible()
    choose(page, WHERE, "identity")
    expect(page.get_by_role("radio", name=re.compile("^identity — ")).first).to_have_attribute("aria-checked", "true")
    expect(page.get_by_text("computes exactly what this one did; nothing drops")).to_be_visible()
    expect(count).to_have_text(f"parameters: {layers['params']:,} → {layers['params'] + point['params']:,} "
                               f"(+{point['params']:,})")
    expect(page.locator('[data-role="autosave-note"]')).to_contain_text(f"'autosave before expand at {WHERE}'")

    page.locator('[data-role="confirm-expand"]').click()
    notification = page.locator(".q-notification").filter(has_text="saved as checkpoint")
    expect(notification).to_be_visible(timeout=WAIT_MS)
    expect(notification).to_contain_text(f"first saved as 'autosave before expand at {WHERE}'")
    expect(page.locator('[data-role="expand-layers"]')).to_be_hidden(timeout=WAIT_MS)  # the dialog closed

    # The trainer has the new node, with what grew where; the tree shows it, under its autosave.
    grown = eventually(lambda: [c for c in client.checkpoints() if c.get("expansion")])
    assert len(grown) == 1
    node, expansion = grown[0], grown[0]["expansion"]
    assert (expansion["where"], expansion["init"], expansion["step"]) == (WHERE, "identity", BASE_STEPS)
    assert (expansion["params_before"], expansion["params_after"]) == (layers["params"],
                                                                       layers["params"] + point["params"])
    assert client.model_layers()["params"] == expansion["params_after"]
    assert trainer.session.store.run(client.state()["run_id"])["config"]["expansion"]["step"] == BASE_STEPS
    shown = page.locator(f'[data-node="{node["id"]}"]')
    expect(shown).to_contain_text(grown_caption(expansion), timeout=WAIT_MS)
    expect(shown.locator('[data-role="current"]')).to_be_visible()
    expect(page.locator('[data-role="model-summary"]')).to_have_text(
        f"factor_slot · {expansion['params_after']:,} parameters", timeout=WAIT_MS)

    # Every chart holds the marker at the expansion step; the loss curves on screen have drawn it.
    marker = {"step": BASE_STEPS, "label": marker_label(expansion)}
    page.wait_for_function(
        "(step) => { const c = accCharts.summary()['loss/total'];"
        " return c && c.markersDrawn.includes(step); }", arg=BASE_STEPS, timeout=WAIT_MS)
    summary = charts(page)
    assert {"loss/total", "loss/reconstruction_task", "loss/digit"} <= set(summary)
    assert all(chart["markers"] == [marker] for chart in summary.values()), summary
    # Training goes on in the new run: the curves pass the marker, which stays where it was.
    client.train("start", steps=5)
    later = wait_for_chart(page, "loss/digit", f"lastStep === {BASE_STEPS + 5}")
    assert later["firstStep"] == 1 and later["markers"] == [marker]
    page.wait_for_function(
        "(step) => { const c = accCharts.summary()['loss/digit']; return c && c.lastStep > step"
        " && c.markersDrawn.includes(step); }", arg=BASE_STEPS, timeout=WAIT_MS)
    page.reload()  # the markers come back from the trainer's runs and checkpoints
    page.wait_for_function(
        "(step) => { const c = accCharts.summary()['loss/total'];"
        " return c && c.markersDrawn.includes(step); }", arg=BASE_STEPS, timeout=WAIT_MS)


def test_a_refusal_while_a_recipe_runs_shows_in_the_dialog_and_creates_nothing(small, page):
    trainer, client, url = small
    # Long enough that its own expansion never comes before the cancel at the end.
    job = client.run_recipe("expand_demo", {"base_steps": 50_000, "steps": 10})
    try:
        eventually(lambda: client.job(job["id"])["status"] == "running" and client.state()["step"] > 0
                   and client.state()["status"] == "running")
        before = {c["id"] for c in client.checkpoints()}
        layers = client.model_layers()
        page.goto(url)
        open_dialog(page, layers)
        choose(page, WHERE, "identity")
        page.locator('[data-role="confirm-expand"]').click()
        error = page.locator('[data-role="expand-error"]')
        expect(error).to_contain_text("the trainer refused (409)", timeout=WAIT_MS)
        expect(page.locator('[data-role="expand-layers"]')).to_be_visible()  # still open, the choice kept
        expect(page.locator('[data-role="confirm-expand"]')).to_be_enabled()
        assert {c["id"] for c in client.checkpoints()} == before
        assert not any(c.get("expansion") for c in client.checkpoints())
        assert client.model_layers()["params"] == layers["params"]
        page.locator('[data-role="cancel-expand"]').click()
        expect(page.locator('[data-role="expand-layers"]')).to_be_hidden(timeout=WAIT_MS)
    finally:
        client.cancel_job(job["id"])
        trainer.session.jobs.wait(job["id"], WAIT_MS / 1000)
