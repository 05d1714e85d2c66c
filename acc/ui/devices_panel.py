"""The devices panel of the training page (M4): each device with its role, memory and load, the
mode, and the choice of the train and eval devices.

The panel reads `GET /api/devices` about once a second (the trainer itself refreshes the figures
once a second), in a worker thread and never two reads at a time. Each device is a row: its name
and description, "train"/"eval" badges, the memory in use as a bar with GiB, the utilisation (or
"n/a" where it cannot be read). Below: the mode (one device, or data parallel over N ranks), where
the GPU figures come from, the evaluation worker, and three selects: the train device, the eval
device and the ranks (1: one device; N: data parallel, restarted from the live state). A choice
sends `PUT /api/devices`; while it is in flight the selects are disabled, and what the trainer
refuses (409 while a recipe drives it, 422 for a device it does not have or more ranks than it can
run, 503 when the ranks did not start) is shown in the panel and the selects go back to what the
trainer says. Every answer is also handed to `on_show` (the status bar).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import run, ui

from acc.ui.actions import fetch
from acc.ui.client import TrainerError
from acc.ui.expand_dialog import refusal
from acc.ui.link import Link

POLL_S = 1.0
GIB = 1024 ** 3
NO_EVAL = "none"  # the eval select's key for "on the training thread" (no device is called that)
NO_EVAL_LABEL = "none: on the training thread"
SOURCE_NOTES = {  # where the GPU figures come from (`source` of GET /api/devices)
    "nvml": "GPU figures from NVIDIA's NVML.",
    "torch": "GPU memory from torch; utilisation needs NVIDIA's NVML (nvidia-ml-py), so it reads n/a.",
    "none": "No GPU found: only the CPU is listed.",
}
CPU_NOTE = "cpu: the machine's memory in use and its load, system-wide."


def memory_text(used: int | None, total: int | None) -> str:
    """`3.2 / 15.6 GiB`, or `n/a` where the device does not say."""
    if used is None or total is None:
        return "n/a"
    return f"{used / GIB:.1f} / {total / GIB:.1f} GiB"


def memory_fraction(used: int | None, total: int | None) -> float:
    """How full the memory is, 0..1 (0 where unknown), for the bar."""
    if used is None or not total:
        return 0.0
    return min(1.0, max(0.0, used / total))


def utilization_text(utilization: float | None) -> str:
    """`37%`, or `n/a` where it cannot be read (a GPU without NVML)."""
    return "n/a" if utilization is None else f"{utilization:.0f}%"


def mode_text(info: dict[str, Any]) -> str:
    """`single device`, or `data parallel, 4 ranks`."""
    return f"data parallel, {info['ranks']} ranks" if info["mode"] == "ddp" else "single device"


def rank_choices(info: dict[str, Any]) -> dict[int, str]:
    """How many ranks one may ask for: one per CUDA device when training on CUDA, else up to 4
    processes on the CPU (the trainer refuses more than it has cores, and says so)."""
    if info["train"].startswith("cuda"):
        most = max(1, sum(d["name"].startswith("cuda") for d in info["devices"]))
    else:
        most = 4
    most = max(most, info["ranks"])
    return {n: "1: one device" if n == 1 else f"{n}: data parallel" for n in range(1, most + 1)}


def roles_of(info: dict[str, Any], name: str) -> list[str]:
    """The roles device `name` has: "train" and/or "eval"."""
    return [role for role in ("train", "eval") if info.get(role) == name]


def worker_text(info: dict[str, Any]) -> str:
    """What the evaluation worker is doing, in one line."""
    worker = info.get("eval_worker")
    if info.get("eval") is None:
        return "evaluations run on the training thread"
    state = "not running" if worker is None or not worker.get("alive") else "running"
    restarts = (worker or {}).get("restarts") or 0
    return f"evaluation worker on {info['eval']}: {state}" + (f" (restarted {restarts}×)" if restarts else "")


class DeviceRow:
    """One device: name, description, role badges, memory bar and text, utilisation."""

    def __init__(self, device: dict[str, Any]) -> None:
        name = device["name"]
        with ui.column().classes("full-width acc-gap-0").props(f'data-device="{name}"').mark(f"device:{name}"):
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                ui.label(name).classes("text-weight-medium acc-mono")
                self.badges = {role: ui.badge(role, color="primary" if role == "train" else "teal").props(
                    f'data-role="role-{role}"').mark(f"role-{role}:{name}") for role in ("train", "eval")}
                self.description = ui.label().classes("acc-note ellipsis")
                ui.space()
                ui.label("util").classes("acc-note")
                self.utilization = ui.label().classes("acc-num").props('data-role="device-util"').mark(
                    f"util:{name}")
                self.utilization.tooltip("utilisation")
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                self.bar = ui.linear_progress(0, show_value=False).style("flex: 1").props(
                    'data-role="device-memory-bar"')
                self.memory = ui.label().classes("acc-num text-body2").props('data-role="device-memory"').mark(
                    f"memory:{name}")

    def show(self, device: dict[str, Any], roles: list[str]) -> None:
        # (Setting what it already shows sends nothing: cheap once a second.)
        self.description.set_text(device.get("description") or "")
        for role, badge in self.badges.items():
            badge.set_visibility(role in roles)
        self.utilization.set_text(utilization_text(device.get("utilization")))
        self.bar.set_value(memory_fraction(device.get("memory_used"), device.get("memory_total")))
        self.memory.set_text(memory_text(device.get("memory_used"), device.get("memory_total")))


class DevicesPanel:
    """The devices, polled once a second, and the train/eval choice; see the module docstring."""

    def __init__(self, link: Link, on_show: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.link, self.on_show = link, on_show
        self.info: dict[str, Any] | None = None  # the trainer's latest answer
        self.rows: dict[str, DeviceRow] = {}
        self._reading = False
        self._changing = False
        self._version = 0  # bumped by every change: a read that started before it is stale
        with ui.column().classes("full-width acc-gap-sm"):  # tighter than a card's own gaps
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                ui.label("Devices").classes("acc-title")
                ui.space()
                ui.label("mode").classes("acc-note")
                self.mode = ui.label("—").classes("text-body2").props('data-role="devices-mode"').mark("devices-mode")
            self.box = ui.column().classes("full-width acc-gap-sm").props('data-role="devices"')
            with ui.column().classes("full-width acc-gap-0"):
                self.source = ui.label().classes("acc-note").props('data-role="devices-source"').mark(
                    "devices-source")
                ui.label(CPU_NOTE).classes("acc-note")
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                self.train = ui.select({}, label="train on", on_change=lambda e: self._chosen("train", e.value))
                self.train.props('dense data-role="train-device"').classes("col").mark("train-device")
                self.eval = ui.select({}, label="evaluate on", on_change=lambda e: self._chosen("eval", e.value))
                self.eval.props('dense data-role="eval-device"').classes("col").mark("eval-device")
                self.ranks = ui.select({}, label="ranks", on_change=lambda e: self._chosen("ranks", e.value))
                self.ranks.props('dense data-role="ranks"').classes("col-3").mark("ranks")
            with ui.column().classes("full-width acc-gap-0"):
                self.worker = ui.label().classes("acc-note").props('data-role="eval-worker"').mark("eval-worker")
                self.pending = ui.label().classes("acc-note").props('data-role="devices-pending"')
                self.error = ui.label().classes("text-negative text-body2 acc-pre").props(
                    'data-role="devices-error"').mark("devices-error")
        self._say("")
        self._busy(False)
        ui.timer(POLL_S, self.refresh)

    async def refresh(self) -> None:
        """Read the devices again (the timer's, and after a `devices` event); one read at a time."""
        if self._reading or self.link.connection.status != "connected":
            return
        self._reading, version = True, self._version
        try:
            info = await fetch(self.link.client.devices)
        finally:
            self._reading = False
        if info is not None and version == self._version and not self._changing:
            self.show(info)

    def show(self, info: dict[str, Any]) -> None:
        self.info = info
        devices = info["devices"]
        if [d["name"] for d in devices] != list(self.rows):  # rows only when the devices change
            self.box.clear()
            with self.box:
                self.rows = {d["name"]: DeviceRow(d) for d in devices}
        for device in devices:
            self.rows[device["name"]].show(device, roles_of(info, device["name"]))
        self.mode.set_text(mode_text(info))
        self.source.set_text(SOURCE_NOTES.get(info.get("source", ""), f"GPU figures from {info.get('source')}."))
        self.worker.set_text(worker_text(info))
        names = {d["name"]: d["name"] for d in devices}
        if self.train.options != names:
            self.train.set_options(names)
        if self.eval.options != {NO_EVAL: NO_EVAL_LABEL, **names}:
            self.eval.set_options({NO_EVAL: NO_EVAL_LABEL, **names})
        # What the trainer says; `_chosen` sees the value it already has and sends nothing.
        if self.ranks.options != rank_choices(info):
            self.ranks.set_options(rank_choices(info))
        self.train.set_value(info["train"])
        self.eval.set_value(info["eval"] or NO_EVAL)
        self.ranks.set_value(info["ranks"])
        if self.on_show is not None:
            self.on_show(info)

    async def _chosen(self, role: str, value: Any) -> None:
        if self.info is None or self._changing or value is None:
            return
        current = {"train": self.info["train"], "eval": self.info["eval"] or NO_EVAL, "ranks": self.info["ranks"]}[role]
        if value == current:  # the trainer's own value, set by `show`: nothing to change
            return
        if role == "ranks":
            roles = {"mode": "single"} if value == 1 else {"mode": "ddp", "ranks": value}
        else:
            roles = {"train": value} if role == "train" else {"eval": None if value == NO_EVAL else value}
        self._version += 1
        self._busy(True)
        self._say("")
        try:
            info = await run.io_bound(self.link.client.set_devices, **roles)
        except TrainerError as e:  # shown here, where the choice was made; the selects go back
            self._say(refusal(e))
            info = self.info
        finally:
            self._busy(False)
        if info is not None:  # None: NiceGUI is shutting down
            self.show(info)

    def _busy(self, busy: bool) -> None:
        self._changing = busy
        for select in (self.train, self.eval, self.ranks):
            select.set_enabled(not busy)
        self.pending.set_text("applying…" if busy else "")
        self.pending.set_visibility(busy)

    def _say(self, error: str) -> None:
        self.error.set_text(error)
        self.error.set_visibility(bool(error))
