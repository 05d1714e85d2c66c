"""The header: the pages' links, what the trainer is doing and the buttons that drive it; the banner.

Every page's header starts with the links between the dashboard's pages (`nav_links`). The
training page's status bar shows run, step, samples/s (across all ranks), the mode ("1 device:
cpu", or "DDP × N" over N ranks) and running/paused/idle, and offers only the actions that make
sense in that state; the other pages show the same facts without the controls (`PageHeader`).
The banner appears when the trainer cannot be reached or rejects the token, counts down to the
next retry and offers to retry now.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from acc.ui.actions import FAILED, act
from acc.ui.link import Connection, Link

STATUS_COLORS = {"running": "positive", "paused": "warning", "idle": "grey"}
NAV = (("training", "Training", "/"), ("checkpoints", "Checkpoints", "/checkpoints"), ("compare", "Compare", "/compare"))


def mode_label(device: str, mode: str = "single", ranks: int = 1) -> str:
    """The status bar's mode: `1 device: cpu`, or `DDP × 4` when data parallel over 4 ranks."""
    return f"DDP × {ranks}" if mode == "ddp" else f"1 device: {device}"


def nav_links(current: str | None) -> None:
    """"ACC" and the links to the dashboard's pages, the current one underlined (markers `nav:<page>`)."""
    ui.label("ACC").classes("text-h6 text-weight-bold")
    for key, text, target in NAV:
        link = ui.link(text, target).classes("text-white text-body2").props(f'data-nav="{key}"').mark(f"nav:{key}")
        link.style("text-decoration: " + ("underline" if key == current else "none") + "; text-underline-offset: 4px")
    ui.separator().props("vertical dark").classes("q-mx-xs")


class PageHeader:
    """The header of the pages other than training: links, and the trainer's run, step and status."""

    def __init__(self, current: str | None) -> None:
        with ui.row().classes("full-width items-center text-body2"):
            nav_links(current)
            ui.space()
            self.run = ui.label().props('data-role="run"')
            self.step = ui.label().classes("acc-num").props('data-role="step"')
            self.status = ui.badge("—").props('data-role="status"')

    def show(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        self.run.set_text(f"run {state['run_id']}")
        self.step.set_text(f"step {state['step']:,}")
        if self.status.text != state["status"]:
            self.status.set_text(state["status"])
            self.status.props(f"color={STATUS_COLORS.get(state['status'], 'grey')}")


class StatusBar:
    """Run, step, samples/s, mode, status; start/pause/resume/stop, learning rate, eval, save."""

    def __init__(self, link: Link, save_checkpoint: Callable[[], Awaitable[None]]) -> None:
        self.link = link
        self._lr: float | None = None
        self._mode: tuple[str, int] = ("single", 1)  # from the devices panel; the state has only the device
        self._device = ""
        with ui.row().classes("full-width items-center text-body2"):
            nav_links("training")
            self.run = ui.label().props('data-role="run"')
            self.step = ui.label().classes("acc-num").props('data-role="step"')
            self.speed = ui.label().classes("acc-num").props('data-role="speed"')
            self.speed.tooltip("samples per second, across all ranks")
            self.device = ui.label().props('data-role="mode"').mark("status-mode")
            self.device.tooltip("where training runs: the Devices panel shows and changes it")
            self.status = ui.badge("—").props('data-role="status"')
            ui.space()
            self.steps = ui.number("steps", min=1, step=100, format="%d").style("width: 6rem").props("dense dark")
            self.steps.mark("steps")
            self.steps.tooltip("steps to train; empty: until stopped")
            self.start = ui.button("Start", icon="play_arrow", on_click=lambda: self._train("start"))
            self.pause = ui.button("Pause", icon="pause", on_click=lambda: self._train("pause"))
            self.resume = ui.button("Resume", icon="play_arrow", on_click=lambda: self._train("resume"))
            self.stop = ui.button("Stop", icon="stop", on_click=lambda: self._train("stop"))
            self.lr = ui.number("learning rate", min=0, max=10, format="%.3g").style("width: 7rem")
            self.lr.props("dense dark")
            self.lr.on("change", self._set_lr)  # on enter or blur, not per keystroke
            ui.button("Eval", icon="fact_check", on_click=self._evaluate).tooltip("evaluate every enabled task now")
            ui.button("Save", icon="save", on_click=save_checkpoint).tooltip("save a checkpoint")
        for button in (self.start, self.pause, self.resume, self.stop):
            button.props(f"dense no-caps data-role={button.text.lower()}").mark(button.text.lower())

    def show(self, state: dict[str, Any]) -> None:
        # (Setting a text it already shows sends nothing.)
        self.run.set_text(f"run {state['run_id']}")
        self.step.set_text(f"step {state['step']:,}")
        self.speed.set_text(f"{state['samples_per_s']:,.0f} samples/s")
        self._device = state["device"]
        self.device.set_text(mode_label(self._device, *self._mode))
        status = state["status"]
        if self.status.text != status:
            self.status.set_text(status)
            self.status.props(f"color={STATUS_COLORS.get(status, 'grey')}")
            self.start.set_visibility(status == "idle")
            self.pause.set_visibility(status == "running")
            self.resume.set_visibility(status == "paused")
            self.stop.set_visibility(status != "idle")
        if state["lr"] != self._lr:  # only when the trainer's value changes: never mid-typing
            self._lr = state["lr"]
            self.lr.set_value(self._lr)

    def show_devices(self, info: dict[str, Any]) -> None:
        """The roles as `GET /api/devices` gives them (the devices panel's reads)."""
        self._mode, self._device = (info["mode"], info["ranks"]), info["train"]
        self.device.set_text(mode_label(self._device, *self._mode))

    async def _train(self, action: str) -> None:
        steps = int(self.steps.value) if action == "start" and self.steps.value else None
        await act(action, self.link.client.train, action, steps)

    async def _set_lr(self) -> None:
        if self.lr.value:
            await act("setting the learning rate", self.link.client.set_lr, float(self.lr.value))

    async def _evaluate(self) -> None:
        if await act("evaluation", self.link.client.evaluate) is not FAILED:
            ui.notify("evaluation done", type="positive")


class Banner:
    """Shown while the link is not connected: why, and when the next attempt is."""

    def __init__(self, link: Link) -> None:
        self.link = link
        with ui.row().classes("full-width items-center bg-red-1 text-red-10 q-px-md q-py-sm") as self.box:
            ui.icon("cloud_off")
            self.text = ui.label().props('data-role="banner"')
            ui.space()
            ui.button("Retry now", on_click=link.retry_now).props("flat dense no-caps")
        self.box.set_visibility(False)

    def show(self, connection: Connection) -> None:
        if connection.status in ("connected", "connecting"):
            self.box.set_visibility(False)
            return
        wait = max(0, round(connection.retry_at - time.monotonic())) if connection.retry_at else 0
        if connection.status == "unreachable":
            text = f"cannot reach trainer at {self.link.url} — retrying in {wait} s"
        elif connection.status == "unauthorized":
            text = f"{connection.message} — check --token; retrying in {wait} s"
        else:
            text = f"{connection.message} — retrying in {wait} s"
        self.text.set_text(text)
        self.box.set_visibility(True)
