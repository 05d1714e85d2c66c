"""The devices panel through NiceGUI's simulated user against a real trainer, and its pure parts:
the texts (GiB, n/a, the mode, the worker), the refusals shown in the panel (422 for a device the
trainer does not have, 409 while a recipe drives it), the selects disabled while a change is in
flight, and the status bar's mode. What the page did is checked on the trainer."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from acc.ui.client import TrainerClient
from acc.ui.devices_panel import (GIB, NO_EVAL, SOURCE_NOTES, memory_fraction, memory_text, mode_text, rank_choices,
                                  roles_of, utilization_text, worker_text)
from acc.ui.status import mode_label
from tests.test_ui import dashboard_and_link, eventually, no_error_logs  # noqa: F401 (an autouse fixture)

SMALL_MODEL = {"name": "factor_slot", "factors": ["digit", "style"], "slot_dim": 4, "channels": 8, "hidden": 16}
GPU = {"name": "cuda:7", "kind": "cuda", "description": "Imaginary GPU", "memory_total": 80 * GIB,
       "memory_used": 8 * GIB, "utilization": None}


# ---- pure logic ------------------------------------------------------------------------------------
def test_the_panel_texts():
    assert memory_text(int(3.2 * GIB), 16 * GIB) == "3.2 / 16.0 GiB"
    assert memory_text(None, 16 * GIB) == "n/a" and memory_text(1, None) == "n/a"
    assert memory_fraction(8 * GIB, 80 * GIB) == pytest.approx(0.1)
    assert memory_fraction(None, None) == 0.0 and memory_fraction(5, 0) == 0.0 and memory_fraction(9, 4) == 1.0
    assert utilization_text(37.4) == "37%" and utilization_text(0.0) == "0%" and utilization_text(None) == "n/a"
    single = {"train": "cpu", "eval": None, "mode": "single", "ranks": 1, "eval_worker": None}
    assert mode_text(single) == "single device"
    assert mode_text({**single, "mode": "ddp", "ranks": 4}) == "data parallel, 4 ranks"
    assert roles_of(single, "cpu") == ["train"] and roles_of({**single, "eval": "cpu"}, "cpu") == ["train", "eval"]
    assert roles_of({**single, "eval": "cuda:1"}, "cuda:1") == ["eval"] and roles_of(single, "cuda:0") == []
    assert worker_text(single) == "evaluations run on the training thread"
    on_gpu = {**single, "eval": "cuda:1", "eval_worker": {"alive": True, "restarts": 0}}
    assert worker_text(on_gpu) == "evaluation worker on cuda:1: running"
    assert worker_text({**on_gpu, "eval_worker": {"alive": False, "restarts": 2}}) == (
        "evaluation worker on cuda:1: not running (restarted 2×)")
    assert mode_label("cpu") == "1 device: cpu" and mode_label("cuda:0", "single", 1) == "1 device: cuda:0"
    assert mode_label("cuda:0", "ddp", 4) == "DDP × 4"
    assert set(SOURCE_NOTES) == {"nvml", "torch", "none"} and "n/a" in SOURCE_NOTES["torch"]
    cpu = {"name": "cpu"}
    assert list(rank_choices({**single, "devices": [cpu]})) == [1, 2, 3, 4]
    on_cuda = {**single, "train": "cuda:0", "devices": [cpu, GPU, {**GPU, "name": "cuda:8"}]}
    assert rank_choices(on_cuda) == {1: "1: one device", 2: "2: data parallel"}
    assert list(rank_choices({**on_cuda, "mode": "ddp", "ranks": 3})) == [1, 2, 3]  # what runs is always listed


# ---- the page against a real trainer ----------------------------------------------------------------
@pytest.fixture
def small_trainer(trainer_factory, tiny_config):
    return trainer_factory(tasks=["ReconstructionTask"],
                           config=dataclasses.replace(tiny_config, model=dict(SMALL_MODEL)))


def select(user, marker: str):
    return user.find(marker=marker).elements.pop()


def text_of(user, marker: str) -> str:
    return user.find(marker=marker).elements.pop().text


@pytest.mark.asyncio
async def test_a_device_the_trainer_lacks_is_refused_in_the_panel_and_figures_are_formatted(small_trainer):
    with TrainerClient(small_trainer.base_url) as client:
        real = await asyncio.to_thread(client.devices)
        async with dashboard_and_link(small_trainer.base_url) as (user, link):
            await user.should_see("1 device: cpu", retries=100)  # the status bar
            await user.should_see(marker="device:cpu", retries=100)
            # A GPU the trainer does not have (as if another machine's listing): shown, and refused when chosen.
            link.client.devices = lambda: {**real, "devices": [*real["devices"], GPU], "source": "torch"}
            await user.should_see(marker="device:cuda:7", retries=100)
            await eventually(lambda: text_of(user, "memory:cuda:7") == "8.0 / 80.0 GiB")
            assert text_of(user, "util:cuda:7") == "n/a"
            assert text_of(user, "memory:cpu").endswith(" GiB") and text_of(user, "util:cpu").endswith("%")
            await user.should_see(SOURCE_NOTES["torch"])
            await user.should_see("single device")
            train = select(user, "train-device")
            assert set(train.options) == {"cpu", "cuda:7"} and train.value == "cpu"
            train.set_value("cuda:7")
            await user.should_see("the trainer refused (422)", retries=100)
            error = text_of(user, "devices-error")
            assert "cuda:7" in error and "devices: cpu" in error
            await eventually(lambda: select(user, "train-device").value == "cpu")  # back to what the trainer says
            assert select(user, "train-device").enabled and select(user, "eval-device").enabled
            assert (await asyncio.to_thread(client.devices))["train"] == "cpu"
            assert (await asyncio.to_thread(client.state))["device"] == "cpu"
            await user.should_see("1 device: cpu")

            # Data parallel as the trainer would report it: the mode in the panel and the status bar.
            link.client.devices = lambda: {**real, "mode": "ddp", "ranks": 4}
            await user.should_see("data parallel, 4 ranks", retries=100)
            await user.should_see("DDP × 4", retries=100)
            await user.should_see("the trainer refused (422)")  # the refusal stays until the next change


@pytest.mark.asyncio
async def test_a_change_while_a_recipe_drives_the_trainer_is_refused_in_the_panel(small_trainer):
    with TrainerClient(small_trainer.base_url) as client:
        # Long enough that it still runs when the change is refused; cancelled at the end.
        job = await asyncio.to_thread(client.run_recipe, "expand_demo", {"base_steps": 50_000, "steps": 10})
        try:
            await eventually(lambda: client.job(job["id"])["status"] == "running")
            async with dashboard_and_link(small_trainer.base_url) as (user, link):
                await user.should_see(marker="device:cpu", retries=100)
                await eventually(lambda: select(user, "eval-device").value == NO_EVAL)
                select(user, "eval-device").set_value("cpu")
                await user.should_see("the trainer refused (409)", retries=100)
                assert "is driving the engine" in text_of(user, "devices-error")
                await eventually(lambda: select(user, "eval-device").value == NO_EVAL)
                assert (await asyncio.to_thread(client.devices))["eval"] is None
        finally:
            await asyncio.to_thread(client.cancel_job, job["id"])
            await asyncio.to_thread(small_trainer.session.jobs.wait, job["id"], 30)


@pytest.mark.asyncio
async def test_the_selects_are_disabled_while_a_change_is_in_flight(small_trainer):
    with TrainerClient(small_trainer.base_url) as client:
        async with dashboard_and_link(small_trainer.base_url) as (user, link):
            await user.should_see(marker="device:cpu", retries=100)
            await eventually(lambda: select(user, "eval-device").value == NO_EVAL)
            real, release, called = link.client.set_devices, threading.Event(), threading.Event()

            def slow_set_devices(**roles):  # the trainer's answer waits until the test has looked
                called.set()
                release.wait(30)
                return real(**roles)
            link.client.set_devices = slow_set_devices
            try:
                select(user, "eval-device").set_value("cpu")
                await asyncio.to_thread(called.wait, 30)
                await user.should_see("applying…", retries=100)
                assert not select(user, "train-device").enabled and not select(user, "eval-device").enabled
                assert select(user, "eval-device").value == "cpu"  # the choice shows while it is applied
            finally:
                release.set()
            await eventually(lambda: select(user, "eval-device").enabled and select(user, "train-device").enabled)
            await user.should_see(marker="role-eval:cpu", retries=100)
            await user.should_see("evaluation worker on cpu: running", retries=100)
            assert (await asyncio.to_thread(client.devices))["eval"] == "cpu"
            select(user, "eval-device").set_value(NO_EVAL)
            await eventually(lambda: client.devices()["eval"] is None)
            await user.should_see("evaluations run on the training thread", retries=100)
            await user.should_not_see(marker="role-eval:cpu", retries=100)


@pytest.mark.asyncio
async def test_ranks_chosen_in_the_panel_restart_training_data_parallel_and_back(small_trainer):
    with TrainerClient(small_trainer.base_url) as client:
        async with dashboard_and_link(small_trainer.base_url) as (user, link):
            await user.should_see(marker="device:cpu", retries=100)
            await eventually(lambda: select(user, "ranks").value == 1)
            select(user, "ranks").set_value(2)
            await user.should_see("data parallel, 2 ranks", retries=200)
            await user.should_see("DDP × 2", retries=100)
            devices = await asyncio.to_thread(client.devices)
            assert (devices["mode"], devices["ranks"]) == ("ddp", 2)
            state = await asyncio.to_thread(client.train, "start", 3)
            await eventually(lambda: client.state()["step"] >= 3 and client.state()["status"] == "idle")
            prints = await asyncio.to_thread(small_trainer.session.engine.rank_fingerprints)
            assert len(prints) == 2 and prints[0] == prints[1], state
            select(user, "ranks").set_value(1)
            await user.should_see("single device", retries=200)
            assert (await asyncio.to_thread(client.devices))["mode"] == "single"
            await user.should_not_see("the trainer refused")
