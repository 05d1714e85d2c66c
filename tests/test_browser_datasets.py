"""The datasets panel in a real browser (Debian's chromium, Playwright) against a real trainer, with
the dashboard as an `acc ui` subprocess: generate a dataset from the [+ Dataset] dialog, then look
at its sample grid. No fixed sleeps: Playwright waits for conditions."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from acc.ui.client import TrainerClient
from tests.conftest import write_user_files
from tests.test_browser import WAIT_MS, browser, page, run_dashboard_process  # noqa: F401 (fixtures)
from tests.test_ui_datasets import N, SYMMETRY_GENERATOR


@pytest.fixture
def dashboard(workspace, trainer_factory) -> Iterator[tuple[str, TrainerClient]]:
    """A dashboard on a trainer that has the symmetry generator, and a client to check on the trainer."""
    write_user_files(workspace, "generators", {"symmetry.py": SYMMETRY_GENERATOR})
    trainer = trainer_factory()
    with TrainerClient(trainer.base_url) as client, run_dashboard_process(trainer.base_url) as url:
        yield url, client


def test_generating_from_the_dialog_shows_the_dataset_and_its_grid(dashboard, page):
    url, client = dashboard
    page.goto(url)
    page.locator('[data-role="open-add-dataset"]').click()
    page.locator('[data-field="generator"]').click()
    page.get_by_role("option", name=re.compile("^SymmetryGenerator")).click()
    expect(page.locator('input[data-field="noise"]')).to_have_value("0.1")  # its parameter form
    page.locator('input[data-field="dataset-name"]').fill("sym")
    page.locator('input[data-field="dataset-n"]').fill(str(N))
    page.locator('[data-role="generate-dataset"]').click()

    row = page.locator('[data-dataset="sym"]')
    expect(row.locator('[data-role="dataset-status"]')).to_have_text("ready", timeout=WAIT_MS)
    info = client.dataset("sym")
    assert info["status"] == "ready" and info["n"] == N and info["generator"] == "SymmetryGenerator"

    row.locator('[data-role="dataset-name"]').click()
    image = page.locator('[data-grid="sym"] img')
    expect(image).to_be_visible(timeout=WAIT_MS)
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                           timeout=WAIT_MS)
    assert image.get_attribute("src").startswith("data:image/png;base64,")  # through the dashboard, not the trainer
    expect(page.locator('[data-role="dataset-histogram"][data-target="symmetry"] canvas')).to_be_visible()


def caption_text_height(png: bytes) -> int:
    """Height in image pixels of the first caption's text: in the first grid cell, the rows between
    its image and the next row's image (image rows hold hardly any of the gap's grey) that hold
    light text pixels."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    background = int(np.bincount(pixels[0]).argmax())  # the gap around the cells
    column = pixels[:, 4:52]  # inside the first cell's width
    image = [bool((row == background).mean() < 0.2) for row in column]
    start = image.index(True)
    caption = start + image[start:].index(False)  # its caption begins where its image ends
    end = caption + (image[caption:] + [True]).index(True)
    text_rows = [y for y in range(caption, end) if (column[y] > 200).any()]
    assert text_rows, "no caption text found"
    return text_rows[-1] - text_rows[0] + 1


def test_grid_captions_are_legible_at_the_default_zoom(dashboard, page):
    url, client = dashboard
    job = client.generate_dataset("SymmetryGenerator", "sym", N)
    page.goto(url)
    expect(page.locator('[data-dataset="sym"] [data-role="dataset-status"]')).to_have_text("ready", timeout=WAIT_MS)
    assert client.job(job["id"])["status"] == "done"
    page.locator('[data-dataset="sym"] [data-role="dataset-name"]').click()
    image = page.locator('[data-grid="sym"] img')
    expect(image).to_be_visible(timeout=WAIT_MS)
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                           timeout=WAIT_MS)
    natural, shown = image.evaluate("img => [img.naturalWidth, img.getBoundingClientRect().width]")
    png = base64.b64decode(image.get_attribute("src").split(",", 1)[1])
    text_px = caption_text_height(png) * shown / natural  # CSS pixels on the page, at zoom 100%
    assert text_px >= 10, f"caption digits {text_px:.1f} px tall on the page"  # ~14 px text or more
