"""The dashboard's page logic against a real trainer, through NiceGUI's simulated user (no browser).

Each test starts a trainer (tests.server_fixtures), a `Link` to it and a simulated page; what the
page did is checked on the trainer itself (`TrainerClient.state`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from nicegui import ui
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation

from acc.engine.session import Session
from acc.server.app import create_app, make_server
from acc.ui.app import dashboard_page
from acc.ui.charts import thin
from acc.ui.client import TrainerClient
from acc.ui.forms import SchemaForm
from acc.ui.link import Link
from acc.ui.tasks_panel import slider_position, slider_weight
from tests.conftest import write_user_files, write_user_tasks

WAIT_S = 30


async def eventually(check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `check` (off the event loop, it may do HTTP) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {check}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def dashboard_and_link(url: str, token: str | None = None) -> AsyncIterator[tuple[User, Link]]:
    """A simulated browser tab on a dashboard for the trainer at `url`, and the dashboard's `Link`."""
    link = Link(url, token)
    link.start()
    async with user_simulation(root=dashboard_page(link)) as user:
        try:
            # The browser's answer to the awaited batches of live points (NiceGUI's simulated
            # browser cannot answer a call that nobody awaits, such as the history's `set`).
            user.javascript_rules[re.compile(r".*accCharts\.append", re.S)] = lambda _: None
            await user.open("/")
            yield user, link
        finally:
            # Stop the trainer's events before NiceGUI cancels the page's tasks, or new ones keep
            # arriving while it waits for the old ones (as `acc ui` does in its shutdown hook).
            await asyncio.to_thread(link.stop)


@asynccontextmanager
async def dashboard(url: str, token: str | None = None) -> AsyncIterator[User]:
    """A simulated browser tab on a dashboard for the trainer at `url`."""
    async with dashboard_and_link(url, token) as (user, _):
        yield user


@pytest.fixture(autouse=True)
def no_error_logs(caplog):
    """An exception in a page handler is only logged by NiceGUI: make it fail the test."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def task_state(client: TrainerClient, name: str) -> dict | None:
    return next((t for t in client.state()["tasks"] if t["name"] == name), None)


# ---- pure logic ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_schema_form_reads_each_kind_of_parameter():
    schema = {"properties": {
        "n": {"type": "integer", "default": 3}, "x": {"type": "number"}, "flag": {"type": "boolean"},
        "mode": {"enum": ["a", "b"], "default": "a"}, "tags": {"type": "array", "items": {"type": "number"}},
        "extra": {"type": "object"}, "label": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    }, "required": ["x"]}
    forms: list[SchemaForm] = []
    async with user_simulation(root=lambda: forms.append(SchemaForm(schema))) as user:
        await user.open("/")
        form = forms[0]
        with pytest.raises(ValueError, match="x: required"):
            form.values()
        values = {"x": 1.5, "tags": "1, 2.5", "extra": '{"a": 1}'}
        for field in form.fields:
            field.input.value = values.get(field.name, field.input.value)
        assert form.values() == {"n": 3, "x": 1.5, "flag": False, "mode": "a", "tags": [1.0, 2.5], "extra": {"a": 1}}


def test_thin_keeps_min_max_and_last_in_step_order():
    points = [(1, 5.0), (2, 9.0), (3, 1.0), (4, 4.0), (5, 3.0)]
    assert thin(points) == [(2, 9.0), (3, 1.0), (5, 3.0)]
    assert thin(points[:2]) == points[:2]


# ---- the page against a real trainer ----------------------------------------------------------------
@pytest.mark.asyncio
async def test_status_shows_the_step_after_training_from_the_start_button(live_trainer):
    async with dashboard(live_trainer.base_url) as user:
        await user.should_see("reconstruction_task", retries=100)
        user.find(marker="steps").type("12")
        user.find(marker="start").click()
        with TrainerClient(live_trainer.base_url) as client:
            await eventually(lambda: client.state()["step"] == 12 and client.state()["status"] == "idle")
        await user.should_see("step 12", retries=100)
        await user.should_see("idle", retries=50)


@pytest.mark.asyncio
async def test_add_task_dialog_lists_the_registry_and_adds_a_task(live_trainer):
    async with dashboard(live_trainer.base_url) as user:
        await user.should_see("reconstruction_task", retries=100)
        user.find(marker="open-add-task").click()
        task_type = user.find(marker="task-type").elements.pop()
        builtins = {"ClassificationTask", "RegressionTask", "ReconstructionTask"}
        await eventually(lambda: builtins <= set(task_type.options))

        task_type.set_value("RegressionTask")  # its `target` parameter is required
        await user.should_see(marker="param:target")
        user.find(marker="add-task").click()
        await user.should_see("target: required")

        task_type.set_value("ClassificationTask")
        user.find(marker="task-name").type("digit_probe")
        user.find(marker="task-latent").elements.pop().set_value("digit")
        user.find(marker="add-task").click()
        with TrainerClient(live_trainer.base_url) as client:
            added = await eventually(lambda: task_state(client, "digit_probe"))
        assert added["type"] == "ClassificationTask" and added["latent"] == "digit"
        await user.should_see(marker="task:digit_probe", retries=100)


DUMMY_TASK = """
import torch.nn.functional as F
from acc.tasks.base import Task

class DummyTask(Task):
    \"\"\"Predict mean pixel intensity from the whole latent.\"\"\"
    def loss(self, out, batch):
        pred = self.head(self.features(out)).squeeze(-1)
        return F.mse_loss(pred, batch["image"].mean(dim=(1, 2, 3)))
"""


@pytest.mark.asyncio
async def test_registry_changes_reach_the_open_page(workspace, trainer_factory):
    folder = write_user_tasks(workspace, {})  # watched from the start
    trainer = trainer_factory()
    async with dashboard(trainer.base_url) as user:
        task_type = user.find(marker="task-type").elements.pop()
        await eventually(lambda: "ReconstructionTask" in task_type.options)
        (folder / "dummy_task.py").write_text(DUMMY_TASK)
        await eventually(lambda: "DummyTask" in task_type.options)  # no reload: the registry event did it
        (folder / "broken_task.py").write_text("class Broken(:\n")
        await user.should_see("broken_task.py", retries=300)
        await user.should_see(marker="registry-error")


@pytest.mark.asyncio
async def test_weight_input_reaches_the_trainer(live_trainer):
    async with dashboard(live_trainer.base_url) as user:
        await user.should_see(marker="task:reconstruction_task", retries=100)
        with user.scope(marker="task:reconstruction_task"):
            user.find(marker="weight").clear().type("2.5")
        with TrainerClient(live_trainer.base_url) as client:
            await eventually(lambda: task_state(client, "reconstruction_task")["weight"] == 2.5)
        slider = user.find(marker="weight-slider").elements.pop()
        assert slider.value == slider_position(2.5) and slider_weight(slider.value) == pytest.approx(2.5, rel=0.07)


@pytest.mark.asyncio
async def test_wrong_token_shows_a_banner(trainer_factory):
    trainer = trainer_factory(token="s3cret")
    async with dashboard(trainer.base_url, token="wrong") as user:
        await user.should_see("rejected the token (401)", retries=100)


@pytest.mark.asyncio
async def test_unreachable_trainer_shows_a_banner_and_the_page_recovers(workspace, tiny_config):
    with socket.socket() as sock:  # a port nothing listens on, until the trainer below does
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with dashboard(url) as user:
        await user.should_see(f"cannot reach trainer at {url} — retrying in", retries=100)
        server = make_server(create_app(lambda: Session.open(workspace.root, tiny_config)), "127.0.0.1", port,
                             log_level="warning")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            await user.should_see("run ", retries=300)  # the status bar fills in once connected
            await user.should_not_see("cannot reach trainer", retries=100)
        finally:
            server.should_exit = True
            await asyncio.to_thread(thread.join, 30)


FORKING_RECIPE = """
from pydantic import Field
from acc.recipes.base import Recipe

class TwoBranches(Recipe):
    \"\"\"A base and two branches that differ in their learning rate.\"\"\"
    class Params(Recipe.Params):
        steps: int = Field(20, ge=1, description="steps of the base")

    def run(self, r):
        r.model("factor_slot", factors=["digit", "style"], slot_dim=4, channels=16, hidden=16)
        r.add_task("ReconstructionTask")
        r.train(steps=self.params.steps)
        base = r.checkpoint("base")
        with r.fork(base, "slow"):
            r.set_lr(1e-4)
            r.train(steps=3)
        with r.fork(base, "fast"):
            r.set_lr(1e-2)
            r.train(steps=3)
"""


@pytest.mark.asyncio
async def test_a_recipe_runs_with_its_form_and_its_branches_compare_as_curves(workspace, trainer_factory):
    write_user_files(workspace, "recipes", {"two_branches.py": FORKING_RECIPE})
    trainer = trainer_factory()
    async with dashboard(trainer.base_url) as user:
        choice = user.find(marker="recipe-choice").elements.pop()
        await eventually(lambda: "TwoBranches" in choice.options)
        choice.set_value("TwoBranches")
        await user.should_see("A base and two branches")
        user.find(marker="param:steps").elements.pop().set_value(7)
        user.find(marker="run-recipe").click()
        await user.should_see("Run recipe 'TwoBranches'?")  # asked first
        user.find(marker="confirm-run-recipe").click()
        with TrainerClient(trainer.base_url) as client:
            await eventually(lambda: [j["status"] for j in client.jobs()] == ["done"])
            nodes = {c["name"]: c for c in client.checkpoints()}
        assert nodes["base"]["step"] == 7 and nodes["fast"]["step"] == 10  # the form's 7 steps reached the recipe

        tree = user.find(marker="checkpoint-tree").elements.pop()
        def node_flags() -> dict[str, bool]:
            def walk(items):
                for node in items:
                    yield node["label"].split(" ·")[0], node["current"]
                    yield from walk(node["children"])
            return dict(walk(tree.props["nodes"]))
        await eventually(lambda: node_flags() == {"base": False, "slow": False, "fast": True})

        user.find(marker="checkpoint-tree").trigger("update:ticked", [nodes["slow"]["id"], nodes["fast"]["id"]])
        compare = user.find(marker="compare")
        assert next(iter(compare.elements)).enabled
        compare.click()  # the comparison page of the two
        await user.should_see(marker="compare:loss/reconstruction_task", retries=100)
        assert user.back_history[-1] == f"/compare?a={nodes['slow']['id']}&b={nodes['fast']['id']}"
        chart = user.find(marker="compare:loss/reconstruction_task").elements.pop()
        lines = [s for s in chart.options["series"] if s.get("name")]
        assert [s["name"] for s in lines] == ["slow", "fast"]
        assert [p[0] for p in lines[0]["data"]] == list(range(1, 11))  # from the root, through the fork
        assert lines[-1]["markLine"]["data"] == [{"xAxis": 7}]  # the fork, at the base's step

        # Delete a leaf from the tree: asked for, then gone from the trainer and the tree.
        await user.open("/")
        tree = user.find(marker="checkpoint-tree").elements.pop()  # the new page's
        await eventually(lambda: node_flags() == {"base": False, "slow": False, "fast": True})
        user.find(marker="checkpoint-tree").trigger("update:selected", nodes["slow"]["id"])
        assert next(iter(user.find(marker="delete-checkpoint").elements)).enabled
        user.find(marker="delete-checkpoint").click()
        await user.should_see("Delete checkpoint 'slow'")
        user.find(marker="confirm-delete-checkpoint").click()
        with TrainerClient(trainer.base_url) as client:
            await eventually(lambda: [c["name"] for c in client.checkpoints()] == ["base", "fast"])
        await eventually(lambda: set(node_flags()) == {"base", "fast"})


@pytest.mark.asyncio
async def test_the_evaluation_table_names_each_task_once_over_its_metrics(trainer_factory):
    trainer = trainer_factory(tasks=["ReconstructionTask", {"type": "ClassificationTask", "latent": "digit"}])
    async with dashboard(trainer.base_url) as user:
        await user.should_see(marker="task:classification_task", retries=100)
        with TrainerClient(trainer.base_url) as client:
            results = (await asyncio.to_thread(client.evaluate))["results"]
        assert len(results["reconstruction_task"]) > 1  # several metrics: the name could repeat
        await user.should_see(marker="eval-table", retries=100)
        table = user.find(marker="eval-table").elements.pop()
        labels = [e.text for e in table.descendants() if isinstance(e, ui.label)]
        for task, metrics in results.items():
            assert labels.count(task) == 1, labels  # once, as the heading of its group
            heading = labels.index(task)
            assert labels[heading + 1:heading + 1 + 2 * len(metrics):2] == sorted(metrics)  # its metrics under it
