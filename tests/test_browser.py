"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real trainer.

The dashboard runs as `acc ui` in a subprocess; what the page shows is read from the page's
charts (`accCharts.summary()`), what it did from the trainer's API. No fixed sleeps: Playwright
waits for conditions, and checks on the trainer poll until a deadline.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from acc.ui.client import TrainerClient
from acc.ui.tasks_panel import SLIDER_MAX, slider_weight
from tests.server_fixtures import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
WAIT_MS = 30_000

@contextmanager
def run_dashboard_process(trainer_url: str, token: str | None = None, ui_token: str | None = None,
                          ready_path: str = "/") -> Iterator[str]:
    """`acc ui` in a subprocess on a free port (the trainer's `token` and the dashboard's own
    `ui_token` given through the environment only); yields its URL once `ready_path` answers."""
    port = free_port()
    command = [sys.executable, "-m", "acc", "ui", "--trainer", trainer_url, "--port", str(port)]
    env = {k: v for k, v in os.environ.items()  # PYTEST_CURRENT_TEST: else NiceGUI thinks it is a test
           if k not in ("PYTEST_CURRENT_TEST", "ACC_TOKEN", "ACC_UI_TOKEN")}
    env.update({key: value for key, value in (("ACC_TOKEN", token), ("ACC_UI_TOKEN", ui_token)) if value})
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:  # poll for readiness: NiceGUI offers nothing to wait on
                try:
                    if httpx.get(url + ready_path, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the dashboard did not start:\n{log.read().decode(errors='replace')}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def charts(page: Page) -> dict[str, dict[str, Any]]:
    """{metric key: {"points", "lastStep"}} as the page's charts hold them."""
    return page.evaluate("accCharts.summary()")


def wait_for_chart(page: Page, key: str, condition: str = "points > 0", timeout: int = WAIT_MS) -> dict[str, Any]:
    """Wait until the chart of `key` satisfies `condition` (a JS expression over points, firstStep,
    lastStep)."""
    page.wait_for_function(
        f"() => {{ const c = window.accCharts && accCharts.summary()[{key!r}];"
        f" if (!c) return false; const {{points, firstStep, lastStep}} = c; return {condition}; }}", timeout=timeout)
    return charts(page)[key]


def eventually(check: Callable[[], Any], timeout: float = WAIT_MS / 1000) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {check}")
        time.sleep(0.05)
    return result


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def dashboard(live_trainer) -> Iterator[tuple[str, TrainerClient]]:
    """The URL of a dashboard on a trainer, and a client to check on the trainer."""
    with TrainerClient(live_trainer.base_url) as client, run_dashboard_process(live_trainer.base_url) as url:
        yield url, client


@pytest.fixture
def training(dashboard) -> Iterator[tuple[str, TrainerClient]]:
    """The same, training."""
    url, client = dashboard
    client.train("start")
    yield url, client
    client.train("stop")


def task_weight(client: TrainerClient, name: str) -> float:
    return next(t["weight"] for t in client.state()["tasks"] if t["name"] == name)


def test_curves_are_drawn_grow_live_and_survive_a_reload(training, page):
    url, client = training
    page.goto(url)
    first = wait_for_chart(page, "loss/total")
    wait_for_chart(page, "loss/reconstruction_task")
    later = wait_for_chart(page, "loss/total", f"lastStep > {first['lastStep']} + 5")
    assert later["points"] > first["points"]

    # A step the trainer has made shows in the browser within a second (plus slack for a busy CI box).
    step = client.state()["step"]
    started = time.monotonic()
    wait_for_chart(page, "loss/total", f"lastStep >= {step}", timeout=3000)
    assert time.monotonic() - started < 1.5

    page.reload()  # the history comes back from the trainer's store
    assert wait_for_chart(page, "loss/total", f"lastStep >= {later['lastStep']}")["points"] >= later["points"] * 0.5


def test_the_first_history_comes_over_http_or_else_over_the_websocket(dashboard, browser):
    url, client = dashboard
    client.train("start", steps=25)
    eventually(lambda: client.state()["step"] == 25 and client.state()["status"] == "idle")
    for blocked in (False, True):
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        page = context.new_page()
        if blocked:  # the browser's fetch fails: the page still gets its history, over the websocket
            page.route("**/_acc/history/*", lambda route: route.abort())
            page.goto(url)
        else:
            with page.expect_response(lambda r: "/_acc/history/" in r.url) as answer:
                page.goto(url)
            batches = answer.value.json()
            assert batches and all(len(points) == 25 for points in batches.values())
        assert wait_for_chart(page, "loss/total", "lastStep == 25")["points"] == 25
        context.close()


def test_zoom_keeps_its_view_while_points_come_double_click_shows_all_and_log_scale(training, page):
    url, client = training
    page.goto(url)
    first = wait_for_chart(page, "loss/total", "lastStep > 40")
    scale = "(() => { const u = document.querySelector('[data-key=\"loss/total\"]').acc.plot;" \
            " return [u.scales.x.min, u.scales.x.max]; })()"
    plot = page.locator('[data-key="loss/total"] .u-over')
    box = plot.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    zoomed = page.evaluate(scale)
    assert zoomed[1] < first["lastStep"]
    wait_for_chart(page, "loss/total", f"lastStep > {first['lastStep']} + 10")
    assert page.evaluate(scale) == zoomed  # live points came, the view stayed
    plot.dblclick()
    page.wait_for_function(f"() => {scale}[1] > {first['lastStep']} + 10")

    page.get_by_text("log scale").click()  # redrawn in the browser on a log axis, nothing re-sent
    page.wait_for_function("() => document.querySelector('[data-key=\"loss/total\"]').acc.plot.scales.y.distr === 3")
    # A constant series (the learning rate) still gets a y range to be drawn in, on both axes.
    page.get_by_text("Training (lr, samples/s, gradient norm)").click()
    lr_range = "(() => { const u = document.querySelector('[data-key=\"lr\"]')?.acc?.plot;" \
               " const lr = u && u.data[1][0];" \
               " return u && u.scales.y.distr === %d && u.scales.y.min < lr && lr < u.scales.y.max; })()"
    page.wait_for_function(f"() => {lr_range % 3}")
    page.get_by_text("log scale").click()
    page.wait_for_function(f"() => {lr_range % 1}")


def test_weight_slider_reaches_the_trainer(training, page):
    url, client = training
    page.goto(url)
    row = page.locator('[data-task="reconstruction_task"]')
    slider = row.locator('[data-role="weight-slider"]')
    expect(slider).to_be_visible(timeout=WAIT_MS)
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    shown = row.locator('input[data-role="weight-number"]')
    # Far right on the log scale: well past the old slider's end (10), towards the API's bound.
    page.mouse.click(box["x"] + box["width"] * 0.9, y)
    expect(shown).not_to_have_value("1", timeout=WAIT_MS)
    weight = eventually(lambda: (w := task_weight(client, "reconstruction_task")) != 1.0 and w)
    assert slider_weight(0.85 * SLIDER_MAX) <= weight <= slider_weight(0.95 * SLIDER_MAX) and weight > 100
    expect(shown).to_have_value(f"{weight:.3g}", timeout=WAIT_MS)  # the trainer has what the page shows
    # Dragged past its left end: off.
    page.mouse.move(box["x"] + box["width"] * 0.9, y)
    page.mouse.down()
    page.mouse.move(box["x"] - 40, y, steps=8)
    page.mouse.up()
    eventually(lambda: task_weight(client, "reconstruction_task") == 0.0)
    expect(shown).to_have_value("0", timeout=WAIT_MS)


def test_adding_a_task_from_the_dialog_makes_its_curve_appear(training, page):
    url, client = training
    page.goto(url)
    wait_for_chart(page, "loss/total")
    page.locator('[data-role="open-add-task"]').click()
    page.locator('[data-field="type"]').click()
    page.get_by_role("option", name="ClassificationTask").click()
    page.locator('input[data-field="name"]').fill("digit_probe")
    page.locator('[data-role="add-task"]').click()
    expect(page.locator('[data-task="digit_probe"]')).to_be_visible(timeout=WAIT_MS)
    assert any(t["name"] == "digit_probe" for t in client.state()["tasks"])
    wait_for_chart(page, "loss/digit_probe", "points > 2")
    # The next add starts with an empty name (suggesting one no task has), and adds another task.
    page.locator('[data-role="open-add-task"]').click()
    name = page.locator('input[data-field="name"]')
    expect(name).to_have_value("")
    expect(name).to_have_attribute("placeholder", "classification_task")
    page.locator('[data-role="add-task"]').click()
    expect(page.locator('[data-task="classification_task"]')).to_be_visible(timeout=WAIT_MS)
    page.locator('[data-role="open-add-task"]').click()
    expect(name).to_have_value("")
    expect(name).to_have_attribute("placeholder", "classification_task_2")


def test_smoothing_is_tensorboards_debiased_ema(dashboard, page):
    url, _ = dashboard
    page.goto(url)
    values, weight = [1.0, 3.0, 2.0, math.nan, 5.0], 0.6
    expected, last, count = [], 0.0, 0
    for value in values:
        if math.isfinite(value):
            count += 1
            last = last * weight + (1 - weight) * value
            value = last / (1 - weight ** count)
        expected.append(value)
    page.wait_for_function("() => window.accCharts")
    smoothed = page.evaluate("([v, w]) => accCharts.ema(v, w)", [values, weight])
    assert smoothed[0] == 1.0  # debiased: the first point is not pulled towards zero
    assert smoothed[:3] == pytest.approx(expected[:3]) and smoothed[4] == pytest.approx(expected[4])
    assert math.isnan(smoothed[3])  # passed through, not averaged in
    assert page.evaluate("([v]) => accCharts.ema(v, 0)", [values[:3]]) == values[:3]


def test_running_smoke_from_the_dashboard_grows_the_checkpoint_tree(dashboard, page):
    url, client = dashboard
    page.goto(url)
    tree = page.locator('[data-role="checkpoint-tree"]')
    expect(tree).to_be_visible(timeout=WAIT_MS)
    page.locator('[data-role="recipe-choice"]').click()
    page.get_by_role("option", name="Smoke", exact=True).click()
    page.get_by_role("button", name="Run", exact=True).click()  # not "Run Eval"
    page.locator('[data-role="confirm-run-recipe"]').click()  # asked first
    job = page.locator('[data-job]').first
    expect(job.locator('[data-role="job-status"]')).to_have_text("done", timeout=120_000)
    for name in ("smoke_base", "smoke_recon", "smoke_digit"):
        expect(tree.get_by_text(f"{name} · step")).to_be_visible(timeout=WAIT_MS)
    nodes = {c["name"]: c for c in client.checkpoints()}
    base = nodes["smoke_base"]["id"]
    # The forks are drawn inside their parent's node: branches, not a flat list.
    parent = page.locator(f'[data-node="{base}"]').locator(
        "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' q-tree__node ')][1]")
    expect(parent.get_by_text("smoke_digit · step")).to_be_visible()
    assert nodes["smoke_digit"]["parent"] == base == nodes["smoke_recon"]["parent"]
    # The trainer continues from the last branch, whose curves begin with those of its parent.
    wait_for_chart(page, "loss/reconstruction_task", "firstStep === 1 && lastStep === 50")
    # The two branches compare as overlaid curves.
    expect(page.locator(f'[data-node="{nodes["smoke_digit"]["id"]}"] [data-role="current"]')).to_be_visible()
    for name in ("smoke_recon", "smoke_digit"):
        page.locator(f'[data-node="{nodes[name]["id"]}"]').locator(
            "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' q-tree__node-header ')][1]"
        ).locator(".q-checkbox").click()
    page.get_by_role("button", name="Compare").click()
    expect(page.locator('[data-compare-key="loss/reconstruction_task"] canvas')).to_be_visible(timeout=WAIT_MS)
    expect(page.locator('[data-role="compare"]').get_by_text("ClassificationTask on digit/mnist")).to_be_visible()


def test_the_checkpoint_delete_button_is_an_icon_with_a_hover_text(dashboard, page):
    url, _ = dashboard
    page.goto(url)
    button = page.locator('[data-role="delete-checkpoint"]')
    expect(button).to_be_visible(timeout=WAIT_MS)
    assert button.inner_text().strip() == "delete"  # the icon's ligature only: no label
    tooltip = page.locator(".q-tooltip")
    expect(tooltip).to_have_count(0)
    page.locator('[data-role="delete-checkpoint-wrap"]').hover()  # off (nothing chosen), and says why
    expect(tooltip).to_have_text("select a node", timeout=WAIT_MS)


def test_a_first_evaluation_is_drawn_around_its_step_and_evaluations_are_not_smoothed(dashboard, page):
    url, client = dashboard
    client.train("start", steps=30)
    eventually(lambda: client.state()["step"] == 30 and client.state()["status"] == "idle")
    page.goto(url)
    wait_for_chart(page, "loss/total", "lastStep === 30")
    metric = sorted(client.evaluate()["results"]["reconstruction_task"])[0]
    key = f"eval/reconstruction_task/{metric}"
    chart = page.locator(f'[data-key="{key}"]')
    expect(chart).to_be_attached(timeout=WAIT_MS)
    chart.scroll_into_view_if_needed()  # charts draw when on screen
    wait_for_chart(page, key, "points === 1")
    scale = (f"() => {{ const u = document.querySelector('[data-key=\"{key}\"]').acc.plot;"
             " return u && u.scales.x.min != null ? [u.scales.x.min, u.scales.x.max] : null; }")
    low, high = page.wait_for_function(scale, timeout=WAIT_MS).json_value()
    assert low < 30 < high and high - low <= 15, (low, high)  # around step 30, not 0 to 60

    client.train("start", steps=10)
    eventually(lambda: client.state()["step"] == 40 and client.state()["status"] == "idle")
    client.evaluate()
    shown = wait_for_chart(page, key, "points === 2")
    assert not shown["smoothed"]  # measured values, drawn as measured
    series = page.evaluate(f"() => document.querySelector('[data-key=\"{key}\"]').acc.plot.series.map(s => s.label)")
    assert series == ["step", "value"]
    page.wait_for_function(scale.replace("u.scales.x.min != null", "u.scales.x.max >= 40"), timeout=WAIT_MS)
    assert charts(page)["loss/total"]["smoothed"]  # the dense training curves still are
