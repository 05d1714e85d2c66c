"""The checkpoint tree's controls and the confirmations before replacing the live training, through
NiceGUI's simulated user against a real trainer."""

from __future__ import annotations

import asyncio

import pytest
from nicegui import ElementFilter, ui

from acc.ui.client import TrainerClient
from acc.ui.tree import autosave_note
from tests.test_ui import dashboard, dashboard_and_link, eventually, no_error_logs  # noqa: F401 (an autouse fixture)


def test_the_autosave_note_names_the_step_and_the_checkpoint():
    assert autosave_note({"step": 1234, "unsaved": True}, "load base_1k") == (
        "The live training at step 1,234 is not saved: it will first be saved as checkpoint "
        "'autosave before load base_1k'.")
    assert autosave_note({"step": 1234, "unsaved": False}, "smoke") == ""
    assert autosave_note({"step": 1234}, "smoke") is None  # a trainer that does not say (nor autosave)
    assert autosave_note(None, "smoke") is None


@pytest.mark.asyncio
async def test_the_delete_button_is_an_icon_with_a_hover_text(live_trainer):
    with TrainerClient(live_trainer.base_url) as client:
        saved = await asyncio.to_thread(client.save_checkpoint, "base")
    async with dashboard(live_trainer.base_url) as user:
        await user.should_see("base · step 0", retries=100)
        button = user.find(marker="delete-checkpoint").elements.pop()
        assert button.text == "" and button.props["icon"] == "delete"  # an icon, no label
        tip = user.find(marker="delete-checkpoint-tip").elements.pop()
        assert isinstance(tip, ui.tooltip)
        assert tip.text == "select a node" and not button.enabled
        user.find(marker="checkpoint-tree").trigger("update:selected", saved["id"])
        await eventually(lambda: tip.text == "the trainer continues from here")  # the saved one is current
        assert button.text == "" and not button.enabled


async def open_and_read(user, opener: str, cancel: str) -> str | None:
    """Open a confirmation with the button marked `opener`; the autosave line it shows (None if
    none); then cancel it with the button marked `cancel`."""
    user.find(marker=opener).click()
    await user.should_see(marker=cancel)
    shown = notes(user)
    assert len(shown) <= 1, shown
    user.find(marker=cancel).click()
    await user.should_not_see(marker=cancel)
    return shown[0] if shown else None


@pytest.mark.asyncio
async def test_confirmations_say_that_unsaved_live_training_is_first_autosaved(live_trainer):
    with TrainerClient(live_trainer.base_url) as client:
        client.train("start", steps=3)
        await eventually(lambda: client.state()["step"] == 3 and client.state()["status"] == "idle")
        base = await asyncio.to_thread(client.save_checkpoint, "base")
        client.train("start", steps=2)
        await eventually(lambda: client.state()["step"] == 5 and client.state()["status"] == "idle")
    async with dashboard_and_link(live_trainer.base_url) as (user, link):
        await user.should_see("base · step 3", retries=100)
        await eventually(lambda: link.state and link.state["step"] == 5 and link.state["status"] == "idle")
        real = link.state
        if "unsaved" in real:  # the trainer says: it has trained since the checkpoint
            assert real["unsaved"] is True
        else:  # a trainer from before the autosave: what it will say (the engine's autosave contract)
            link.state = {**real, "unsaved": True}
        user.find(marker="checkpoint-tree").trigger("update:selected", base["id"])
        expected = ("The live training at step 5 is not saved: it will first be saved as checkpoint "
                    "'autosave before {}'.")
        assert await open_and_read(user, "load-checkpoint", "cancel-load") == expected.format("load base")
        user.find(marker="fork-checkpoint").click()  # named after the branch, as it is typed
        await user.should_see(marker="cancel-fork")
        assert notes(user) == [expected.format("fork base as base-fork")]
        user.find(marker="fork-name").elements.pop().set_value("wide")
        assert notes(user) == [expected.format("fork base as wide")]
        user.find(marker="cancel-fork").click()
        await user.should_not_see(marker="cancel-fork")
        choice = user.find(marker="recipe-choice").elements.pop()
        await eventually(lambda: "Smoke" in choice.options)
        choice.set_value("Smoke")
        assert await open_and_read(user, "run-recipe", "cancel-run-recipe") == expected.format("Smoke")

        link.state = {**real, "unsaved": False}  # saved: nothing to say
        assert await open_and_read(user, "load-checkpoint", "cancel-load") is None
        link.state = {k: v for k, v in real.items() if k != "unsaved"}  # an older trainer: nothing either
        assert await open_and_read(user, "run-recipe", "cancel-run-recipe") is None
        with TrainerClient(live_trainer.base_url) as client:  # all cancelled: nothing happened
            assert client.state()["step"] == 5 and client.jobs() == []
            if "unsaved" not in real:
                return
            # The trainer makes the very checkpoint the confirmation named.
            link.state = real
            user.find(marker="load-checkpoint").click()
            await user.should_see(marker="confirm-load")
            user.find(marker="confirm-load").click()
            names = await eventually(lambda: [c["name"] for c in client.checkpoints() if c["name"] != "base"])
            assert names == ["autosave before load base"]


def notes(user) -> list[str]:
    """The autosave lines shown."""
    with user.client:
        return [e.text for e in ElementFilter(marker="autosave-note", local_scope=False, only_visible=True)]
