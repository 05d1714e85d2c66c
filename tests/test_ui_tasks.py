"""The task rows and the [+ Task] dialog through NiceGUI's simulated user against a real trainer:
the weight's range, names that do not collide, datasets and targets as choices, step times and
the slow badge. What the page did is checked on the trainer (`TrainerClient.state`)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from acc.tasks.base import MAX_WEIGHT as API_MAX_WEIGHT
from acc.ui.client import TrainerClient
from acc.ui.tasks_panel import (MAX_WEIGHT, MIN_ON_WEIGHT, SLIDER_MAX, dataset_choices, free_name, slider_position,
                                slider_weight, step_time)
from tests.conftest import write_user_files
from tests.test_ui import dashboard, dashboard_and_link, eventually, no_error_logs, task_state  # noqa: F401
from tests.test_ui_datasets import SYMMETRY_GENERATOR, generate


# ---- pure logic ------------------------------------------------------------------------------------
def test_the_slider_spans_off_and_the_apis_whole_range_on_a_log_scale():
    assert MAX_WEIGHT == API_MAX_WEIGHT
    assert slider_weight(0) == 0.0 and slider_position(0.0) == 0  # off is reachable
    assert slider_weight(1) == MIN_ON_WEIGHT and slider_weight(SLIDER_MAX) == API_MAX_WEIGHT
    assert slider_weight(slider_position(1.0)) == 1.0 and slider_position(1.0) == (SLIDER_MAX + 1) / 2  # 1 mid-way
    weights = [slider_weight(p) for p in range(SLIDER_MAX + 1)]
    assert weights == sorted(weights) and len(set(weights)) == len(weights)
    ratios = [b / a for a, b in zip(weights[1:], weights[2:])]
    assert max(ratios) < 1.15  # even steps on a log scale, fine enough to set
    for p in range(SLIDER_MAX + 1):
        assert slider_position(slider_weight(p)) == p
    assert slider_position(1e-6) == 1  # tiny, but not off
    assert slider_position(5000) == SLIDER_MAX


def test_free_names_and_dataset_choices_and_step_times():
    assert free_name("classification_task", set()) == "classification_task"
    assert free_name("classification_task", {"classification_task", "classification_task_2"}) == "classification_task_3"
    infos = [{"name": "thick", "status": "ready", "targets": ["thickness"]},
             {"name": "mnist", "status": "ready", "targets": []},
             {"name": "half", "status": "generating", "targets": []},
             {"name": "bad", "status": "failed", "targets": []}]
    assert dataset_choices(infos) == {"mnist": [], "thick": ["thickness"]}
    assert dataset_choices([]) == {"mnist": []}
    assert step_time(12.4) == "12 ms/step" and step_time(0.853) == "0.85 ms/step"


# ---- the page against a real trainer ----------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_weight_slider_reaches_zero_and_the_apis_bound(live_trainer):
    async with dashboard(live_trainer.base_url) as user:
        await user.should_see(marker="task:reconstruction_task", retries=100)
        slider = user.find(marker="weight-slider").elements.pop()
        number = user.find(marker="weight").elements.pop()
        assert (slider.props["min"], slider.props["max"]) == (0, SLIDER_MAX)
        assert (number.props["min"], number.props["max"]) == (0, API_MAX_WEIGHT)  # the same range
        with TrainerClient(live_trainer.base_url) as client:
            for position, weight in ((SLIDER_MAX, API_MAX_WEIGHT), (0, 0.0), (slider_position(0.01), 0.01)):
                slider.set_value(position)  # as a drag to there does
                await eventually(lambda: task_state(client, "reconstruction_task")["weight"] == weight)
                assert number.value == weight
            number.set_value(250)  # typed: the slider follows
            await eventually(lambda: task_state(client, "reconstruction_task")["weight"] == 250)
            assert slider.value == slider_position(250) and slider.props["label-value"] == "250"


@pytest.mark.asyncio
async def test_adding_twice_without_a_name_gives_two_tasks(live_trainer):
    async with dashboard(live_trainer.base_url) as user:
        await user.should_see(marker="task:reconstruction_task", retries=100)
        user.find(marker="open-add-task").click()
        task_type = user.find(marker="task-type").elements.pop()
        name = user.find(marker="task-name").elements.pop()
        await eventually(lambda: "ClassificationTask" in task_type.options)
        task_type.set_value("ClassificationTask")
        assert name.props["placeholder"] == "classification_task"
        user.find(marker="add-task").click()
        await user.should_see(marker="task:classification_task", retries=100)
        assert name.value == ""  # nothing left over for the next one
        assert name.props["placeholder"] == "classification_task_2"  # a name no task has
        user.find(marker="open-add-task").click()
        name.set_value("digit_probe")  # a name of one's own...
        user.find(marker="add-task").click()
        await user.should_see(marker="task:digit_probe", retries=100)
        assert name.value == ""  # ...is not kept either
        user.find(marker="open-add-task").click()
        user.find(marker="add-task").click()
        await user.should_see(marker="task:classification_task_2", retries=100)
        with TrainerClient(live_trainer.base_url) as client:
            names = [t["name"] for t in client.state()["tasks"]]
        assert names == ["reconstruction_task", "classification_task", "digit_probe", "classification_task_2"]
        assert not user.notify.contains("adding the task failed")


@pytest.mark.asyncio
async def test_the_dataset_and_the_target_are_choices_among_what_the_trainer_has(workspace, trainer_factory):
    write_user_files(workspace, "generators", {"symmetry.py": SYMMETRY_GENERATOR})
    trainer = trainer_factory()
    async with dashboard(trainer.base_url) as user:
        await user.should_see(marker="task:reconstruction_task", retries=100)
        await asyncio.to_thread(generate, trainer, "sym")  # after the page loaded: the dialog fetches on open
        with TrainerClient(trainer.base_url) as client:
            ready = sorted(d["name"] for d in client.datasets() if d["status"] == "ready" and d["name"] != "mnist")
        assert "sym" in ready
        user.find(marker="open-add-task").click()
        dataset = user.find(marker="task-dataset").elements.pop()
        await eventually(lambda: dataset.options == ["mnist", *ready])  # MNIST first
        task_type = user.find(marker="task-type").elements.pop()
        await eventually(lambda: "RegressionTask" in task_type.options)
        task_type.set_value("RegressionTask")  # it predicts a target: a dataset that has one is chosen
        target = user.find(marker="param:target").elements.pop()
        assert dataset.value == "sym" and target.options == ["symmetry"] and target.value == "symmetry"
        dataset.set_value("mnist")  # no targets there
        assert target.options == [] and target.value is None
        await user.should_see("dataset 'mnist' has no targets")
        dataset.set_value("sym")
        assert target.value == "symmetry"
        user.find(marker="add-task").click()
        await user.should_see(marker="task:regression_task", retries=100)
        with TrainerClient(trainer.base_url) as client:
            added = task_state(client, "regression_task")
        assert added["dataset"] == "sym" and added["error"] is None


@pytest.mark.asyncio
async def test_rows_show_their_step_time_and_a_slow_badge(live_trainer):
    async with dashboard_and_link(live_trainer.base_url) as (user, link):
        await user.should_see(marker="task:reconstruction_task", retries=100)
        await user.should_not_see(marker="slow")
        with TrainerClient(live_trainer.base_url) as client:
            client.train("start", steps=3)
            await eventually(lambda: client.state()["step"] == 3 and client.state()["status"] == "idle")
            last = task_state(client, "reconstruction_task").get("step_ms")  # its last step's time
        await user.should_see("loss ", retries=100)
        if last is not None:
            assert "time/reconstruction_task" in link.keys  # and at every step, in the metrics
            expected = step_time(last)
        else:  # a trainer from before the per-task times: the `metrics` event it will send
            link._receive({"event": "metrics", "data": {"step": [4], "values": {
                "loss/reconstruction_task": [0.5], "time/reconstruction_task": [12.4]}}})
            expected = "12 ms/step"
        with user.scope(marker="task:reconstruction_task"):
            await user.should_see(expected, retries=100)
        state = link.state  # the trainer marks a task slow in its state
        link.state = {**state, "tasks": [{**t, "slow": True} for t in state["tasks"]]}
        with user.scope(marker="task:reconstruction_task"):
            await user.should_see(marker="slow", retries=100)
        link.state = {**state, "tasks": [{**t, "slow": False} for t in state["tasks"]]}
        await user.should_not_see(marker="slow", retries=100)


@pytest.mark.asyncio
async def test_a_task_over_the_trainers_time_limit_is_marked_slow(trainer_factory, tiny_config):
    if not hasattr(tiny_config, "slow_task_s"):
        pytest.skip("this trainer has no step time limit yet")
    trainer = trainer_factory(config=dataclasses.replace(tiny_config, slow_task_s=0.0))  # every step is over it
    async with dashboard(trainer.base_url) as user:
        await user.should_see(marker="task:reconstruction_task", retries=100)
        await user.should_not_see(marker="slow")
        with TrainerClient(trainer.base_url) as client:
            client.train("start", steps=2)
            await eventually(lambda: client.state()["step"] == 2 and client.state()["status"] == "idle")
            assert task_state(client, "reconstruction_task")["slow"]
        with user.scope(marker="task:reconstruction_task"):
            await user.should_see(marker="slow", retries=100)
            await user.should_see("ms/step")
        assert user.notify.contains("'reconstruction_task' is slow")  # the trainer's `error` event
