"""The task list of the running trainer, and the [+ Task] dialog.

Each row steers one task live: a weight slider (0..10) with a number input for larger weights
(sent once the value settles, `Debounce`), an enable switch, remove (after a confirmation); it
shows the last loss, a `stale` badge (the task's code changed on disk since it was added) and the
error that disabled it. Rows follow the trainer's state; they never assume an action succeeded.
The dialog lists the task registry as it is now (it updates while open) and builds the form of
the chosen type's own parameters from its JSON schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nicegui import ui

from acc.ui.actions import FAILED, Debounce, act
from acc.ui.forms import SchemaForm
from acc.ui.link import Link
from acc.ui.panels import header_with_add

SLIDER_MAX = 10.0  # the slider's range; the number input beside it takes weights up to the API's bound
MAX_WEIGHT = 1000.0
ISOLATION_MODES = ["probe", "slot", "shared"]


def latent_groups(model: dict[str, Any]) -> list[str]:
    """The latent groups a task may bind to: "all" and the model's named factors."""
    return ["all", *model.get("factors", {})]


class TaskRow:
    """One task: its controls and what the trainer last said about it."""

    def __init__(self, link: Link, task: dict[str, Any]) -> None:
        self.link, self.name = link, task["name"]
        self.weight = task["weight"]  # as the trainer last reported it
        self.card = ui.card().classes("full-width q-pa-sm acc-gap-xs").props(f'data-task="{self.name}"')
        with self.card.mark(f"task:{self.name}"):
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                ui.label(self.name).classes("text-weight-medium")
                ui.label(f"{task['type']} · {task['latent']} · {task['dataset']}").classes("acc-note")
                self.stale = ui.badge("stale", color="orange").tooltip(
                    "its code changed on disk since it was added: remove and add it again to use the new code")
                ui.space()
                self.loss = ui.label().classes("text-body2 acc-num").props('data-role="loss"')
                self.enabled = ui.switch(value=task["enabled"], on_change=self._toggled).props("dense")
                self.enabled.tooltip("train this task")
                ui.button(icon="delete", on_click=self._confirm_remove).props("flat dense round data-role=remove")
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                ui.label("weight").classes("acc-note")
                self.slider = ui.slider(min=0, max=SLIDER_MAX, step=0.05, value=min(self.weight, SLIDER_MAX),
                                        on_change=lambda e: self._weight_input(e.value, from_slider=True))
                self.slider.classes("col-grow").props("label data-role=weight-slider").mark("weight-slider")
                self.number = ui.number(value=self.weight, min=0, max=MAX_WEIGHT, step=0.1, format="%.3g",
                                        on_change=lambda e: self._weight_input(e.value, from_slider=False))
                self.number.style("width: 6rem").props("dense data-role=weight-number").mark("weight")
            self.error = ui.label().classes("text-negative text-caption acc-pre").props('data-role="error"')
        self._sending = Debounce(self.card, self._send_weight)
        self._echo = False  # set while the row itself moves the two weight inputs
        self.update(task)

    # ---- from the trainer ------------------------------------------------------------------------
    def update(self, task: dict[str, Any]) -> None:
        self.weight = task["weight"]
        with self._quiet():
            if not self._sending.pending:  # never yank a slider the user is moving
                self.slider.set_value(min(self.weight, SLIDER_MAX))
                self.number.set_value(self.weight)
            self.enabled.set_value(task["enabled"])
        self.stale.set_visibility(bool(task["stale"]))
        self.error.set_text(task["error"] or "")
        self.error.set_visibility(bool(task["error"]))
        if task.get("last_loss") is not None:
            self.show_loss(task["last_loss"])

    def show_loss(self, value: float) -> None:
        self.loss.set_text(f"loss {value:.4g}")  # unchanged text sends nothing

    # ---- from the user ---------------------------------------------------------------------------
    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Inputs changed by the row itself (following the trainer) must not send anything."""
        self._echo = True
        try:
            yield
        finally:
            self._echo = False

    def _weight_input(self, value: float | None, from_slider: bool) -> None:
        if self._echo or value is None:
            return
        with self._quiet():  # keep the other input in step
            if from_slider:
                self.number.set_value(value)
            else:
                self.slider.set_value(min(value, SLIDER_MAX))
        self._sending.push(float(value))

    async def _send_weight(self, weight: float) -> None:
        if weight == self.weight:
            return
        result = await act(f"setting the weight of {self.name}", self.link.client.update_task, self.name,
                           weight=weight)
        if result is FAILED:  # show what the trainer still has
            with self._quiet():
                self.slider.set_value(min(self.weight, SLIDER_MAX))
                self.number.set_value(self.weight)
        else:
            self.weight = result["weight"]

    async def _toggled(self, event: Any) -> None:
        if event.value is None or self._echo:
            return
        result = await act(f"{'enabling' if event.value else 'disabling'} {self.name}",
                           self.link.client.update_task, self.name, enabled=bool(event.value))
        if result is FAILED:
            with self._quiet():
                self.enabled.set_value(not event.value)

    async def _confirm_remove(self) -> None:
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Remove task {self.name!r}? Its head and its optimizer state are dropped.")
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat")
                ui.button("Remove", color="negative", on_click=lambda: dialog.submit(True))
        if await dialog:
            await act(f"removing {self.name}", self.link.client.remove_task, self.name)
        dialog.delete()


class AddTaskDialog:
    """[+ Task]: pick a registered task type, set where it reads and its parameters, add it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.items: dict[str, dict[str, Any]] = {}
        self.form: SchemaForm | None = None
        with ui.dialog() as self.dialog, ui.card().style("width: 40rem; max-width: 100%"):
            ui.label("Add a task").classes("acc-title")
            self.type = ui.select({}, label="Task type", on_change=self._type_chosen).classes("full-width")
            self.type.props('data-field="type"').mark("task-type")
            self.doc = ui.label().classes("text-body2 text-grey-8")
            with ui.grid(columns=2).classes("full-width"):
                self.name = ui.input("Name", placeholder="from the type").props('data-field="name"').mark("task-name")
                self.latent = ui.select(["all"], label="Latent group", value="all", new_value_mode="add-unique")
                self.latent.props('data-field="latent"').mark("task-latent")
                self.dataset = ui.input("Dataset", value="mnist").props('data-field="dataset"')
                self.weight = ui.number("Weight", value=1.0, min=0, max=MAX_WEIGHT, step=0.1)
                self.weight.props('data-field="weight"')
                self.isolation = ui.select(ISOLATION_MODES, label="Isolation", value="slot")
                self.isolation.props('data-field="isolation"')
            self.params = ui.column().classes("full-width acc-gap-xs")
            self.registry_errors = ui.label().classes("text-negative text-caption")
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=self.dialog.close).props("flat")
                ui.button("Add", on_click=self._submit).props('data-role="add-task"').mark("add-task")

    def open(self) -> None:
        self.dialog.open()

    def set_registry(self, listing: dict[str, Any]) -> None:
        """Show the registry as it is now; the chosen type stays chosen if it still exists."""
        self.items = {item["name"]: item for item in listing["items"]}
        self.type.set_options({name: f"{name} — {item['doc']}" if item["doc"] else name
                               for name, item in self.items.items()},
                              value=self.type.value if self.type.value in self.items else None)
        errors = listing["errors"]
        self.registry_errors.set_text(
            f"{len(errors)} task file(s) failed to load: see Registry errors" if errors else "")

    def set_latents(self, groups: list[str]) -> None:
        self.latent.set_options(groups, value=self.latent.value if self.latent.value in groups else "all")

    def _type_chosen(self) -> None:
        item = self.items.get(self.type.value)
        self.params.clear()
        self.form = None
        if item is None:
            self.doc.set_text("")
            return
        self.doc.set_text(item["doc"])
        defaults = item["params"].get("defaults", {})
        if defaults.get("latent") in self.latent.options:
            self.latent.set_value(defaults["latent"])
        self.dataset.set_value(defaults.get("dataset", self.dataset.value))
        self.weight.set_value(defaults.get("weight", self.weight.value))
        self.isolation.set_value(defaults.get("isolation", self.isolation.value))
        with self.params:
            self.form = SchemaForm(item["params"].get("schema", {}))

    async def _submit(self) -> None:
        if self.type.value is None:
            ui.notify("choose a task type", type="warning")
            return
        try:
            params = self.form.values() if self.form else {}
        except ValueError as e:
            ui.notify(str(e), type="warning")
            return
        result = await act("adding the task", self.link.client.add_task, self.type.value,
                           name=self.name.value.strip() or None, weight=self.weight.value,
                           latent=self.latent.value, dataset=self.dataset.value.strip() or None,
                           isolation=self.isolation.value, params=params)
        if result is not FAILED:
            ui.notify(f"task {result['name']!r} added", type="positive")
            self.name.set_value("")
            self.dialog.close()


class TasksPanel:
    """The rows of the trainer's tasks, kept in the order the trainer lists them."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.rows: dict[str, TaskRow] = {}
        self.dialog = AddTaskDialog(link)
        header_with_add("Tasks", "Task", self.dialog.open)
        self.container = ui.column().classes("full-width acc-gap-sm")
        self.empty = ui.label("No tasks yet: add one with [+ Task].").classes("text-grey-7")

    def sync(self, state: dict[str, Any]) -> None:
        tasks = {task["name"]: task for task in state["tasks"]}
        for name in [n for n in self.rows if n not in tasks]:
            self.rows.pop(name).card.delete()
        for name, task in tasks.items():
            if name in self.rows:
                self.rows[name].update(task)
            else:
                with self.container:
                    self.rows[name] = TaskRow(self.link, task)
        self.empty.set_visibility(not tasks)
        self.dialog.set_latents(latent_groups(state.get("model", {})))

    def show_losses(self, values: dict[str, float]) -> None:
        for name, row in self.rows.items():
            if f"loss/{name}" in values:
                row.show_loss(values[f"loss/{name}"])
