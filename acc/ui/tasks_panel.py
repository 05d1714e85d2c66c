"""The task list of the running trainer, and the [+ Task] dialog.

Each row steers one task live: a weight slider and a number input over the same range, the API's
(0, and 0.001 to 1000 on a log scale for the slider; sent once the value settles, `Debounce`), an
enable switch, remove (after a confirmation); it shows the last loss, the milliseconds the task's
loss took per step (`time/<task>`), a `slow` badge (its step time exceeds the trainer's limit), a
`stale` badge (the task's code changed on disk since it was added) and the error that disabled it.
Rows follow the trainer's state; they never assume an action succeeded.
The dialog lists the task registry as it is now (it updates while open) and builds the form of
the chosen type's own parameters from its JSON schema; the dataset is a choice among the
trainer's ready datasets (fetched when the dialog opens), and a `target` parameter a choice among
the chosen dataset's targets. Its name field suggests a name no task has yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nicegui import ui

from acc.ui.actions import FAILED, Debounce, act, fetch
from acc.ui.forms import SchemaForm
from acc.ui.link import Link
from acc.ui.panels import header_with_add

MAX_WEIGHT = 1000.0  # the API's bound (acc/tasks/base.py MAX_WEIGHT)
MIN_ON_WEIGHT = 0.001  # the slider's smallest weight above 0 (off); the number input takes any
STEPS_PER_DECADE = 20  # slider positions per factor of ten: neighbours differ by 12%
# The slider's positions: 0 is weight 0 (off), 1..SLIDER_MAX run from MIN_ON_WEIGHT to MAX_WEIGHT on
# a log scale, so that 0.01 and 500 are as easy to set as 1; the number input has the same range.
SLIDER_MAX = 1 + round(math.log10(MAX_WEIGHT / MIN_ON_WEIGHT) * STEPS_PER_DECADE)
ISOLATION_MODES = ["probe", "slot", "shared"]
BUILTIN_DATASET = "mnist"


def slider_weight(position: float) -> float:
    """The weight at a slider position (three significant digits)."""
    if position <= 0:
        return 0.0
    position = min(round(position), SLIDER_MAX)
    return float(f"{MIN_ON_WEIGHT * 10 ** ((position - 1) / STEPS_PER_DECADE):.3g}")


def slider_position(weight: float) -> int:
    """The slider position nearest to a weight (0 only for 0: a tiny weight is not off)."""
    if weight <= 0:
        return 0
    position = 1 + round(math.log10(max(weight, MIN_ON_WEIGHT) / MIN_ON_WEIGHT) * STEPS_PER_DECADE)
    return min(position, SLIDER_MAX)


def step_time(ms: float) -> str:
    """`12 ms/step`, `0.85 ms/step`."""
    return f"{ms:.0f} ms/step" if ms >= 10 else f"{ms:.2g} ms/step"


def free_name(base: str, taken: set[str]) -> str:
    """`base` (the name the trainer gives a task of its type when none is given, from the registry
    listing), or the first of `<base>_2`, `<base>_3`... that no task has."""
    return next(name for name in (base, *(f"{base}_{i}" for i in range(2, len(taken) + 3))) if name not in taken)


def dataset_choices(infos: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{dataset: its targets} of the datasets a task can train on: MNIST and the ready ones."""
    ready = {info["name"]: list(info.get("targets", [])) for info in infos if info.get("status") == "ready"}
    return {BUILTIN_DATASET: ready.pop(BUILTIN_DATASET, []), **dict(sorted(ready.items()))}


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
                self.slow = ui.badge("slow", color="negative").props('data-role="slow"').mark("slow").tooltip(
                    "its loss takes longer per step than the trainer allows")
                ui.space()
                self.time = ui.label().classes("acc-note acc-num").props('data-role="step-time"')
                self.time.tooltip("time its loss took in the last step")
                self.loss = ui.label().classes("text-body2 acc-num").props('data-role="loss"')
                self.enabled = ui.switch(value=task["enabled"], on_change=self._toggled).props("dense")
                self.enabled.tooltip("train this task")
                ui.button(icon="delete", on_click=self._confirm_remove).props("flat dense round data-role=remove")
            with ui.row().classes("full-width items-center no-wrap acc-gap-sm"):
                ui.label("weight").classes("acc-note").tooltip(
                    f"0 (off), or {MIN_ON_WEIGHT:g} to {MAX_WEIGHT:g}: the slider on a log scale")
                self.slider = ui.slider(min=0, max=SLIDER_MAX, step=1, value=slider_position(self.weight),
                                        on_change=lambda e: self._weight_input(e.value, from_slider=True))
                self.slider.classes("col-grow").props("label data-role=weight-slider").mark("weight-slider")
                self._label_slider(self.weight)
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
                self._show_weight(self.weight)
            self.enabled.set_value(task["enabled"])
        self.stale.set_visibility(bool(task["stale"]))
        self.slow.set_visibility(bool(task.get("slow", False)))  # an older trainer does not say
        self.error.set_text(task["error"] or "")
        self.error.set_visibility(bool(task["error"]))
        if task.get("last_loss") is not None:
            self.show_loss(task["last_loss"])
        if task.get("step_ms") is not None:  # the state's; the metrics bring it at every step
            self.show_time(task["step_ms"])

    def show_loss(self, value: float) -> None:
        self.loss.set_text(f"loss {value:.4g}")  # unchanged text sends nothing

    def show_time(self, ms: float) -> None:
        self.time.set_text(step_time(ms))

    def _show_weight(self, weight: float) -> None:
        self.slider.set_value(slider_position(weight))
        self._label_slider(weight)
        self.number.set_value(weight)

    def _label_slider(self, weight: float) -> None:
        """The slider's bubble shows the weight, not the position."""
        if self.slider.props.get("label-value") != f"{weight:g}":
            self.slider.props["label-value"] = f"{weight:g}"
            self.slider.update()

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
        weight = slider_weight(value) if from_slider else min(max(float(value), 0.0), MAX_WEIGHT)
        with self._quiet():  # keep the other input in step
            if from_slider:
                self.number.set_value(weight)
            else:
                self.slider.set_value(slider_position(weight))
            self._label_slider(weight)
        self._sending.push(weight)

    async def _send_weight(self, weight: float) -> None:
        if weight == self.weight:
            return
        result = await act(f"setting the weight of {self.name}", self.link.client.update_task, self.name,
                           weight=weight)
        if result is FAILED:  # show what the trainer still has
            with self._quiet():
                self._show_weight(self.weight)
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
        self.datasets: dict[str, list[str]] = {BUILTIN_DATASET: []}  # {name: targets}, fetched on open
        self.taken: set[str] = set()  # the trainer's task names
        with ui.dialog() as self.dialog, ui.card().style("width: 40rem; max-width: 100%"):
            ui.label("Add a task").classes("acc-title")
            self.type = ui.select({}, label="Task type", on_change=self._type_chosen).classes("full-width")
            self.type.props('data-field="type"').mark("task-type")
            self.doc = ui.label().classes("text-body2 text-grey-8")
            with ui.grid(columns=2).classes("full-width"):
                self.name = ui.input("Name").props('data-field="name"').mark("task-name")
                self.latent = ui.select(["all"], label="Latent group", value="all", new_value_mode="add-unique")
                self.latent.props('data-field="latent"').mark("task-latent")
                self.dataset = ui.select(list(self.datasets), label="Dataset", value=BUILTIN_DATASET,
                                         on_change=self._dataset_chosen)
                self.dataset.props('data-field="dataset"').mark("task-dataset")
                self.weight = ui.number("Weight", value=1.0, min=0, max=MAX_WEIGHT, step=0.1)
                self.weight.props('data-field="weight"')
                self.isolation = ui.select(ISOLATION_MODES, label="Isolation", value="slot")
                self.isolation.props('data-field="isolation"')
            self.params = ui.column().classes("full-width acc-gap-xs")
            self.no_targets = ui.label().classes("text-caption text-grey-8").props('data-role="no-targets"')
            self.registry_errors = ui.label().classes("text-negative text-caption")
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=self.dialog.close).props("flat")
                ui.button("Add", on_click=self._submit).props('data-role="add-task"').mark("add-task")
        self._suggest_name()

    async def open(self) -> None:
        self.dialog.open()
        # NiceGUI's input writes what the browser last showed into its props when the closing dialog
        # unmounts it, after the `set_value("")` of the last add: the reopened dialog would show the
        # previous name again. Sending the input anew makes it show the value this side has.
        self.name.update()
        infos = await fetch(self.link.client.datasets)  # as they are now: generated ones come and go
        if infos is not None:
            self.set_datasets(dataset_choices(infos))

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

    def set_taken(self, names: set[str]) -> None:
        """The names the trainer's tasks have: the suggested name is none of them."""
        self.taken = set(names)
        self._suggest_name()

    def set_datasets(self, datasets: dict[str, list[str]]) -> None:
        """The datasets to choose from, with their targets; the chosen one stays if it is still there."""
        self.datasets = datasets
        self.dataset.set_options(list(datasets), value=self.dataset.value if self.dataset.value in datasets
                                 else BUILTIN_DATASET)
        self._dataset_chosen()

    def _suggested(self) -> str | None:
        item = self.items.get(self.type.value)
        if item is None:
            return None
        return free_name(item["params"].get("defaults", {}).get("name", self.type.value), self.taken)

    def _suggest_name(self) -> None:
        """An empty name means the suggested one, shown as the placeholder."""
        placeholder = self._suggested() or "from the type"
        if self.name.props.get("placeholder") != placeholder:
            self.name.props["placeholder"] = placeholder
            self.name.update()

    def _wants_target(self) -> bool:
        return self.form is not None and self.form.field("target") is not None

    def _type_chosen(self) -> None:
        item = self.items.get(self.type.value)
        self.params.clear()
        self.form = None
        self._suggest_name()
        if item is None:
            self.doc.set_text("")
            self._dataset_chosen()
            return
        self.doc.set_text(item["doc"])
        defaults = item["params"].get("defaults", {})
        if defaults.get("latent") in self.latent.options:
            self.latent.set_value(defaults["latent"])
        schema = item["params"].get("schema", {})
        dataset = defaults.get("dataset") if defaults.get("dataset") in self.datasets else self.dataset.value
        if "target" in schema.get("properties", {}) and not self.datasets.get(dataset):
            # A task that predicts a target needs a dataset that has one: the first such, if any.
            dataset = next((name for name, targets in self.datasets.items() if targets), dataset)
        self.weight.set_value(defaults.get("weight", self.weight.value))
        self.isolation.set_value(defaults.get("isolation", self.isolation.value))
        with self.params:
            self.form = SchemaForm(schema, choices={"target": self.datasets.get(dataset, [])})
        if dataset != self.dataset.value:
            self.dataset.set_value(dataset)  # its on_change offers its targets
        else:
            self._dataset_chosen()

    def _dataset_chosen(self) -> None:
        """A `target` parameter offers the chosen dataset's targets."""
        targets = self.datasets.get(self.dataset.value, [])
        if self._wants_target():
            self.form.field("target").set_choices(targets)
        wants = self._wants_target() and not targets
        self.no_targets.set_text(f"dataset {self.dataset.value!r} has no targets: generate one with [+ Dataset]"
                                 if wants else "")
        self.no_targets.set_visibility(wants)

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
                           name=(self.name.value or "").strip() or self._suggested(), weight=self.weight.value,
                           latent=self.latent.value, dataset=self.dataset.value or None,
                           isolation=self.isolation.value, params=params)
        if result is not FAILED:
            ui.notify(f"task {result['name']!r} added", type="positive")
            self.name.set_value("")  # the next one gets a name of its own
            self.set_taken(self.taken | {result["name"]})  # before the trainer's state says so
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
        self.dialog.set_taken(set(tasks))

    def show_losses(self, values: dict[str, float]) -> None:
        """The newest per-task values of the metrics: the loss and the step time (`time/<task>`, ms)."""
        for name, row in self.rows.items():
            if f"loss/{name}" in values:
                row.show_loss(values[f"loss/{name}"])
            if f"time/{name}" in values:
                row.show_time(values[f"time/{name}"])
