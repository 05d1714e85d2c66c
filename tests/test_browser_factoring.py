"""The factoring pages in a real browser (Debian's chromium, driven by Playwright) against a real trainer:
an evaluation run from the checkpoint tree, its evaluation page with its figures loaded through the
dashboard, and a comparison of two checkpoints opened from the tree. No fixed sleeps: Playwright
waits for conditions."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from acc.ui.client import TrainerClient
from tests.test_browser import WAIT_MS, browser, page, run_dashboard_process  # noqa: F401 (fixtures)

DIGIT = {"type": "ClassificationTask", "name": "digit", "latent": "digit"}
JOB_MS = 300_000
NODE_HEADER = "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' q-tree__node-header ')][1]"


def images_loaded(page: Page, role: str, count: int) -> None:
    """Wait until `count` images with data-role `role` have loaded, each wider than a 9-step row of digits."""
    page.wait_for_function(
        "([role, count]) => { const images = [...document.querySelectorAll(`img[data-role=\"${role}\"]`)];"
        " return images.length === count && images.every((i) => i.complete && i.naturalWidth > 9 * 28); }",
        arg=[role, count], timeout=WAIT_MS)


@pytest.fixture
def trained(trainer_factory):
    trainer = trainer_factory(tasks=["ReconstructionTask", DIGIT])
    engine = trainer.session.engine
    engine.train(20)
    first = engine.save_checkpoint("first")
    engine.train(5)
    second = engine.save_checkpoint("second")
    return trainer, first, second


def test_run_eval_from_the_tree_then_its_evaluation_page_then_a_comparison(trained, page):
    trainer, first, second = trained
    with TrainerClient(trainer.base_url) as client, run_dashboard_process(trainer.base_url) as url:
        job = client.start_factoring(second["id"])  # the other one is evaluated from the page
        assert trainer.session.jobs.wait(job["id"], JOB_MS / 1000).status == "done"

        page.goto(url + "/checkpoints")
        node = page.locator(f'[data-node="{first["id"]}"]')
        expect(node).to_be_visible(timeout=WAIT_MS)
        expect(page.locator(f'[data-node="{second["id"]}"] [data-role="ufr"]')).to_be_visible(timeout=WAIT_MS)
        expect(node.locator('[data-role="ufr"]')).to_have_count(0)
        node.click()  # select it
        expect(page.get_by_text("selected: first")).to_be_visible(timeout=WAIT_MS)
        page.get_by_role("button", name="Run Eval").click()
        badge = node.locator('[data-role="ufr"]')
        expect(badge).to_be_visible(timeout=JOB_MS)
        report = client.factoring(first["id"])
        expect(badge).to_have_text(f"UFR {report['ufr']:.2f}")

        node.locator('[data-role="eval-link"]').click()
        expect(page).to_have_url(f"{url}/checkpoints/{first['id']}/eval", timeout=WAIT_MS)
        table = page.locator('[data-role="ufr-table"]')
        expect(table.locator("tbody tr")).to_have_count(len(report["concepts"]), timeout=WAIT_MS)
        for i, (name, concept) in enumerate(report["concepts"].items()):  # in the report's order
            cells = table.locator("tbody tr").nth(i).locator("td")
            expect(cells.nth(0)).to_have_text(name)
            expect(cells.nth(1)).to_have_text(concept["slot"])
            expect(cells.nth(2)).to_have_text(f"{concept['I']:.3g} ± {concept['se']['I']:.2g}")
        expect(page.locator('[data-transfer="thickness"] canvas').first).to_be_visible(timeout=WAIT_MS)
        images_loaded(page, "traversal", len(report["slots"]))  # fetched by the browser, through the dashboard
        images_loaded(page, "attention", 1)

        page.locator('[data-role="back-to-tree"]').click()
        expect(page).to_have_url(f"{url}/checkpoints", timeout=WAIT_MS)
        for checkpoint in (first, second):
            header = page.locator(f'[data-node="{checkpoint["id"]}"]').locator(NODE_HEADER)
            expect(header).to_be_visible(timeout=WAIT_MS)
            header.locator(".q-checkbox").click()
        page.get_by_role("button", name="Compare").click()
        expect(page).to_have_url(f"{url}/compare?a={first['id']}&b={second['id']}", timeout=WAIT_MS)
        other = client.factoring(second["id"])
        scores = page.locator('[data-role="compare-scores"]')
        expect(scores.locator('[data-cell="UFR:a"]')).to_have_text(
            ("▲ " if report["ufr"] > other["ufr"] + 5e-4 else "") + f"{report['ufr']:.3g}", timeout=WAIT_MS)
        expect(scores.locator('[data-better="true"]').first).to_be_visible()  # some value is better on one side
        images_loaded(page, "compare-traversal", 2 * len(report["slots"]))  # side by side, per slot group
        images_loaded(page, "compare-attention", 2)
        expect(page.locator('[data-compare-key="loss/reconstruction_task"] canvas')).to_be_visible(timeout=WAIT_MS)
