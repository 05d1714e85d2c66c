"""The recipe runner panel (M1.95): run a recipe, with its parameters, as a job and follow its
progress from the stream; the checkpoints it saves join the tree beside it."""

from __future__ import annotations

import time
from typing import Any

from nicegui import ui

from acc.ui.actions import FAILED, act, fetch
from acc.ui.forms import SchemaForm
from acc.ui.link import Link
from acc.ui.tree import autosave_label, autosave_note


class RecipesPanel:
    """Run a recipe as a job, with its parameters (a form from its `Params`); its progress and
    outcome come from the `job` stream events."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.jobs: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.form: SchemaForm | None = None
        with ui.row().classes("full-width items-center"):
            ui.label("Recipes").classes("acc-title")
            ui.space()
            self.choice = ui.select([], label="recipe", on_change=lambda: self._show_recipe()).props(
                'dense data-role="recipe-choice"').style("width: 12rem").mark("recipe-choice")
            ui.button("Run", icon="play_arrow", on_click=self.run).props("flat dense").mark("run-recipe")
        self.about = ui.column().classes("full-width acc-gap-xs")
        self.box = ui.column().classes("full-width acc-gap-xs")

    def set_registry(self, listing: dict[str, Any]) -> None:
        items = {item["name"]: item for item in listing["items"]}
        changed = items.get(self.choice.value) != self.items.get(self.choice.value)
        self.items = items
        self.choice.set_options(list(items), value=self.choice.value if self.choice.value in items else None)
        if changed:  # its file changed: its doc and parameters may have too
            self._show_recipe()

    def _show_recipe(self) -> None:
        self.about.clear()
        self.form = None
        item = self.items.get(self.choice.value)
        if item is None:
            return
        with self.about:
            if item["doc"]:
                ui.label(item["doc"]).classes("acc-note acc-pre")
            self.form = SchemaForm(item["params"].get("schema", {}))

    async def load(self) -> None:
        jobs = await fetch(self.link.client.jobs)
        if jobs is not None:
            self.jobs = {job["id"]: job for job in jobs if job["kind"] == "recipe"}
            self._draw()

    def show_job(self, job: dict[str, Any]) -> None:
        if job["kind"] == "recipe":
            self.jobs[job["id"]] = job
            self._draw()

    async def run(self) -> None:
        if not self.choice.value:
            ui.notify("choose a recipe first", type="warning")
            return
        try:
            params = self.form.values() if self.form else {}
        except ValueError as e:
            ui.notify(f"recipe parameter {e}", type="warning")
            return
        recipe = self.choice.value
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Run recipe {recipe!r}? It sets up its own model and tasks in the trainer and trains them; "
                     "the checkpoints it saves join the tree.")
            autosave_label(autosave_note(self.link.state, recipe))  # the trainer names it after the class
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat").mark("cancel-run-recipe")
                ui.button("Run", on_click=lambda: dialog.submit(True)).props('data-role="confirm-run-recipe"').mark(
                    "confirm-run-recipe")
        confirmed = await dialog
        dialog.delete()
        if not confirmed:
            return
        job = await act(f"running {recipe}", self.link.client.run_recipe, recipe, params)
        if job is not FAILED:
            self.show_job(job)

    def _draw(self) -> None:
        self.box.clear()
        with self.box:
            for job in sorted(self.jobs.values(), key=lambda j: j["created"], reverse=True)[:5]:
                with ui.row().classes("full-width items-center no-wrap").props(f'data-job="{job["id"]}"'):
                    ui.label(job["name"]).classes("text-weight-medium")
                    ui.label(job["status"]).props('data-role="job-status"')
                    ui.linear_progress(job["progress"], show_value=False).style("flex: 1")
                    if job["status"] in ("queued", "running"):
                        ui.button(icon="stop", on_click=lambda j=job: self.cancel(j["id"])).props(
                            "flat dense round size=sm").tooltip("cancel: checkpoints made so far stay")
                    elif job["finished"]:
                        ui.label(time.strftime("%H:%M:%S", time.localtime(job["finished"]))).classes("acc-note")
                if job.get("autosaved"):
                    ui.label(f"the live training was first saved as {job['autosaved']['name']!r}").classes(
                        "acc-note").props('data-role="job-autosaved"')
                if job["error"]:
                    ui.label(job["error"]).classes("text-negative text-caption acc-pre")

    async def cancel(self, job_id: str) -> None:
        await act("cancelling the job", self.link.client.cancel_job, job_id)
