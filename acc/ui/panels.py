"""The side panels: evaluation metrics, reconstructions and registry errors.

Each panel fetches what it shows through the client in a worker thread and is refreshed by the
page when a stream event says it changed. A failed fetch leaves the panel as it was: the banner
already says when the trainer is unreachable.
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any

from nicegui import ui

from acc.ui.actions import fetch
from acc.ui.link import Link

REGISTRY_KINDS = ("tasks", "generators", "recipes")
SPARK_POINTS = 50


def header_with_add(title: str, thing: str, on_add: Any) -> None:
    """A panel's title with its [+ thing] button on the right (marker `open-add-<thing>`)."""
    marker = f"open-add-{thing.lower()}"
    with ui.row().classes("full-width items-center"):
        ui.label(title).classes("acc-title")
        ui.space()
        ui.button(thing, icon="add", on_click=on_add).props(f'data-role="{marker}"').mark(marker)


def sparkline(values: list[float], width: int = 110, height: int = 24) -> str:
    """An inline SVG polyline of the values (the latest on the right)."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"
                      for i, v in enumerate(values) if math.isfinite(v))
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<polyline fill="none" stroke="#1e88e5" stroke-width="1.5" points="{points}"/></svg>')


class EvalPanel:
    """The latest value of each task's evaluation metrics, with their history as sparklines."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.history: list[dict[str, Any]] = []  # oldest first
        ui.label("Evaluation").classes("acc-title")
        self.box = ui.column().classes("full-width acc-gap-0")

    async def load(self) -> None:
        evals = await fetch(self.link.client.evals, limit=SPARK_POINTS)
        if evals is not None:
            self.history = evals[::-1]
            self._draw()

    def add(self, result: dict[str, Any]) -> None:
        self.history = [*self.history, result][-SPARK_POINTS:]
        self._draw()

    def _draw(self) -> None:
        self.box.clear()
        with self.box:
            if not self.history:
                ui.label("No evaluation yet: press Eval, or wait for the periodic one.").classes("text-grey-7")
                return
            latest = self.history[-1]
            ui.label(f"step {latest['step']:,}").classes("acc-note")
            # Grouped by task: its name once, over its metrics' rows.
            grid = ui.grid(columns="auto auto 1fr").classes("full-width items-center text-body2")
            with grid.style("gap: 0 .75rem").props('data-role="eval-table"').mark("eval-table"):
                for task, metrics in sorted(latest["results"].items()):
                    ui.label(task).classes("text-weight-medium q-pt-xs").style("grid-column: 1 / -1").props(
                        f'data-eval-task="{task}"')
                    for metric, value in sorted(metrics.items()):
                        trend = [e["results"].get(task, {}).get(metric, math.nan) for e in self.history]
                        ui.label(metric).classes("q-pl-md")
                        ui.label(f"{value:.4g}").classes("acc-num").props(
                            f'data-metric="{task}/{metric}"')
                        ui.html(sparkline(trend), sanitize=False).tooltip(  # numbers only: nothing to sanitize
                            f"eval/{task}/{metric}: last {len(trend)} evaluations")


class ReconstructionPanel:
    """Inputs over reconstructions, fetched again when the page asks (every ~10 s, after evals)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.fetched_at = 0.0
        self._png: bytes | None = None
        ui.label("Reconstructions").classes("acc-title")
        ui.label("top: input · bottom: output").classes("acc-note")
        self.image = ui.image().classes("full-width").style("image-rendering: pixelated").props('data-role="recon"')

    async def refresh(self) -> None:
        self.fetched_at = time.monotonic()
        png = await fetch(self.link.client.reconstructions_png, 8)
        if png and png != self._png:
            self._png = png
            self.image.set_source(f"data:image/png;base64,{base64.b64encode(png).decode()}")


class RegistryErrorsPanel:
    """Files of the task, generator and recipe registries that failed to load, and why."""

    def __init__(self) -> None:
        self.errors: dict[str, list[dict[str, Any]]] = {kind: [] for kind in REGISTRY_KINDS}
        ui.label("Registry errors").classes("acc-title")
        self.box = ui.column().classes("full-width acc-gap-xs")
        self._draw()

    def show(self, kind: str, errors: list[dict[str, Any]]) -> None:
        if errors != self.errors[kind]:
            self.errors[kind] = errors
            self._draw()

    def _draw(self) -> None:
        self.box.clear()
        with self.box:
            rows = [(kind, e) for kind in REGISTRY_KINDS for e in self.errors[kind]]
            if not rows:
                ui.label("All task, generator and recipe files load.").classes("text-grey-7")
            for kind, error in rows:
                where = f"{error['file']}:{error['line']}" if error.get("line") else error["file"]
                with ui.column().classes("acc-gap-0").props('data-role="registry-error"').mark("registry-error"):
                    ui.label(f"{kind} · {where}").classes("text-caption acc-mono")
                    ui.label(error["message"]).classes("text-negative text-body2 acc-pre")
