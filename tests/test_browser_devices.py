"""The devices panel in a real browser (Debian's chromium, driven by Playwright) against a real
trainer: it lists the CPU with its memory and utilisation, live, the mode and the roles; choosing
an eval device starts the trainer's evaluation worker there and the panel shows the eval role,
choosing "none" stops it. No fixed sleeps: Playwright waits for page conditions, `eventually` for
the trainer's."""

from __future__ import annotations

import dataclasses
import re

import pytest
from playwright.sync_api import Page, expect

from acc.ui.client import TrainerClient
from acc.ui.devices_panel import NO_EVAL_LABEL, SOURCE_NOTES, memory_text
from tests.test_browser import WAIT_MS, browser, eventually, page, run_dashboard_process  # noqa: F401

SMALL_MODEL = {"name": "factor_slot", "factors": ["digit", "style"], "slot_dim": 4, "channels": 8, "hidden": 16}


@pytest.fixture
def small(trainer_factory, tiny_config):
    """A trainer of a small model on the CPU, a client to it and a dashboard's URL."""
    trainer = trainer_factory(tasks=["ReconstructionTask"],
                              config=dataclasses.replace(tiny_config, model=dict(SMALL_MODEL)))
    with TrainerClient(trainer.base_url) as client, run_dashboard_process(trainer.base_url) as url:
        yield trainer, client, url
        if client.devices()["eval"] is not None:  # never leave a worker process behind
            client.set_devices(eval=None)


def choose(page: Page, role: str, option: str) -> None:
    """Pick `option` in the panel's select `role` (train-device, eval-device)."""
    page.locator(f'[data-role="{role}"]').click()
    page.get_by_role("option", name=option, exact=True).click()


def selects_enabled(page: Page) -> None:
    """Both selects take a choice again (the change is answered)."""
    for role in ("train-device", "eval-device"):
        expect(page.locator(f'[data-role="{role}"]')).not_to_have_class(re.compile("q-field--disabled"),
                                                                        timeout=WAIT_MS)


def test_the_panel_shows_the_cpu_live_and_switches_the_eval_worker(small, page):
    trainer, client, url = small
    info = client.devices()
    assert (info["train"], info["eval"], info["mode"], info["ranks"]) == ("cpu", None, "single", 1)
    page.goto(url)
    cpu = page.locator('[data-device="cpu"]')
    expect(cpu.locator('[data-role="device-memory"]')).to_have_text(re.compile(r"^\d+\.\d / \d+\.\d GiB$"),
                                                                    timeout=WAIT_MS)
    expect(cpu.locator('[data-role="device-util"]')).to_have_text(re.compile(r"^\d+%$"))
    expect(cpu).to_contain_text(info["devices"][0]["description"])
    expect(cpu.locator('[data-role="role-train"]')).to_be_visible()
    expect(cpu.locator('[data-role="role-eval"]')).to_be_hidden()
    expect(page.locator('[data-role="devices-mode"]')).to_have_text("single device")
    expect(page.locator('[data-role="devices-source"]')).to_have_text(SOURCE_NOTES[info["source"]])
    expect(page.locator('[data-role="mode"]')).to_have_text("1 device: cpu")  # the status bar
    expect(page.locator('[data-role="eval-worker"]')).to_have_text("evaluations run on the training thread")
    expect(page.locator('[data-role="train-device"]')).to_contain_text("cpu")
    expect(page.locator('[data-role="eval-device"]')).to_contain_text(NO_EVAL_LABEL)
    # Live: the bar is the memory in use out of the total, and the text follows the trainer's readings.
    bar = cpu.locator('[data-role="device-memory-bar"]')
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^0\.\d+$"))

    def shows_the_trainers_reading() -> bool:
        now = client.devices()["devices"][0]
        return cpu.locator('[data-role="device-memory"]').inner_text() == memory_text(now["memory_used"],
                                                                                      now["memory_total"])
    eventually(shows_the_trainers_reading)

    # Eval on the CPU: the trainer starts its worker; the panel shows the role and the worker.
    choose(page, "eval-device", "cpu")
    after = eventually(lambda: (d := client.devices())["eval"] == "cpu" and d["eval_worker"]["alive"] and d)
    assert after["train"] == "cpu" and after["eval_worker"]["restarts"] == 0
    expect(cpu.locator('[data-role="role-eval"]')).to_be_visible(timeout=WAIT_MS)
    expect(cpu.locator('[data-role="role-train"]')).to_be_visible()
    expect(page.locator('[data-role="eval-worker"]')).to_have_text("evaluation worker on cpu: running",
                                                                   timeout=WAIT_MS)
    expect(page.locator('[data-role="devices-error"]')).to_be_hidden()
    selects_enabled(page)
    assert set(client.evaluate()["results"]) == {"reconstruction_task"}  # evaluated in the worker

    # None: back on the training thread, the worker gone.
    choose(page, "eval-device", NO_EVAL_LABEL)
    eventually(lambda: (d := client.devices())["eval"] is None and d["eval_worker"] is None)
    expect(cpu.locator('[data-role="role-eval"]')).to_be_hidden(timeout=WAIT_MS)
    expect(page.locator('[data-role="eval-worker"]')).to_have_text("evaluations run on the training thread")
    expect(page.locator('[data-role="eval-device"]')).to_contain_text(NO_EVAL_LABEL)
    selects_enabled(page)

    page.reload()  # what the panel shows comes from the trainer
    expect(page.locator('[data-role="eval-device"]')).to_contain_text(NO_EVAL_LABEL, timeout=WAIT_MS)
    expect(cpu.locator('[data-role="role-train"]')).to_be_visible(timeout=WAIT_MS)
    expect(cpu.locator('[data-role="role-eval"]')).to_be_hidden()
