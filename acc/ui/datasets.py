"""The datasets panel (M3): the trainer's datasets, generating new ones, and looking at them.

The list shows every dataset the trainer knows: MNIST, generated ones, and generations running,
failed or cancelled. A running generation shows its job's progress from the `job` stream events;
when the job ends the list is fetched again. [+ Dataset] opens a dialog: a generator from the
registry (kept up to date by `registry` events while open), its doc, its parameters (`SchemaForm`),
then the new dataset's name, size and seed. Choosing a dataset shows a sample grid of its images
captioned with a target value (resample, sort by target), a histogram per target and the digit
class distribution; choosing a second one to compare shows both grids side by side, overlays the
histograms of the targets both have on the same bins, and overlays the class distributions.
Pictures are fetched by the dashboard process and sent to the page as data URLs: the browser never
talks to the trainer.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from typing import Any

from nicegui import background_tasks, ui

from acc.ui.actions import FAILED, act, fetch
from acc.ui.forms import SchemaForm
from acc.ui.link import Link
from acc.ui.panels import header_with_add

NAME = re.compile(r"[a-z0-9_-]{1,64}")  # the API's DATASET_NAME
NAME_RULE = "a dataset name is 1 to 64 lowercase letters, digits, '_' or '-'"
DEFAULT_N = 5000
MAX_N = 1_000_000
GRID_IMAGES = 64
GRID_COLUMNS = 8
BINS = 30
COLORS = ("#1565c0", "#ef6c00")  # the chosen dataset, the one compared with it
FINISHED = ("done", "failed", "cancelled")


# ---- pure helpers -----------------------------------------------------------------------------------
def name_problem(name: str) -> str | None:
    """Why `name` cannot name a new dataset, or None when it can."""
    return None if NAME.fullmatch(name) else f"{name!r} is not a valid name: {NAME_RULE}"


def suggested_name(generator: str) -> str:
    """A dataset name from a generator's class name: `SlantGenerator` -> `slant`."""
    words = re.sub(r"(?<!^)(?=[A-Z])", "_", generator.removesuffix("Generator")).lower()
    return re.sub(r"[^a-z0-9_-]", "", words)[:64] or "dataset"


def png_source(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def common_range(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """One range covering two datasets' values of a target, so both can be binned alike."""
    lo, hi = min(a["min"], b["min"]), max(a["max"], b["max"])
    return lo, max(hi, lo + 1e-9)  # a constant target still gets a range, as the API does


def target_series(names: list[str], histograms: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, dict]]]]:
    """`(target, [(dataset, histogram), ...])` for every target of the datasets, in order: both
    datasets where both have it, else the one that has it."""
    targets = dict.fromkeys(t for h in histograms for t in h["targets"])
    return [(t, [(name, h["targets"][t]) for name, h in zip(names, histograms) if t in h["targets"]])
            for t in targets]


def bar_options(title: str, subtext: str, categories: list[str], series: list[tuple[str, list[int]]],
                colors: dict[str, str]) -> dict:
    """ECharts options: one bar series per dataset over the same categories, overlaid. Counts for one
    dataset; for two, each one's share of its own images, as their sizes may differ."""
    overlay = len(series) > 1
    bars = [{"type": "bar", "name": name, "color": colors[name], "barGap": "-100%", "barCategoryGap": "8%",
             "itemStyle": {"opacity": 0.55 if overlay else 0.9},
             "data": [round(c / (sum(counts) or 1), 4) for c in counts] if overlay else counts}
            for name, counts in series]
    return {"animation": False,
            "title": {"text": title, "subtext": subtext, "left": 0, "itemGap": 4,
                      "textStyle": {"fontSize": 12, "fontWeight": "normal"},
                      "subtextStyle": {"fontSize": 11, "lineHeight": 14}},
            "legend": {"show": overlay, "right": 0, "top": 0},
            "tooltip": {"trigger": "axis"},
            "grid": {"left": 56, "right": 12, "top": 64 if overlay else 50, "bottom": 24},
            "xAxis": {"type": "category", "data": categories},
            "yAxis": {"type": "value", "name": "share of images" if overlay else "images", "nameLocation": "middle",
                      "nameGap": 40},
            "series": bars}


def histogram_options(target: str, histograms: list[tuple[str, dict[str, Any]]], colors: dict[str, str]) -> dict:
    """A target's histogram per dataset (the same bins), with each one's mean and std in the title."""
    edges = histograms[0][1]["edges"]
    centers = [f"{(lo + hi) / 2:.3g}" for lo, hi in zip(edges, edges[1:])]
    stats = "\n".join(f"{name}: mean {h['mean']:.3g}, std {h['std']:.3g}" for name, h in histograms)
    return bar_options(target, stats, centers, [(name, h["counts"]) for name, h in histograms], colors)


def classes_options(classes: list[tuple[str, list[int]]], colors: dict[str, str]) -> dict:
    """The digit class distribution per dataset."""
    return bar_options("digit classes", "", [str(d) for d in range(10)], classes, colors)


# ---- the [+ Dataset] dialog -------------------------------------------------------------------------
class GenerateDialog:
    """[+ Dataset]: a generator, its parameters, a name, a size and a seed; Generate starts the job."""

    def __init__(self, link: Link, started: Callable[[dict[str, Any]], None]) -> None:
        self.link, self.started = link, started
        self.items: dict[str, dict[str, Any]] = {}
        self.form: SchemaForm | None = None
        self._suggested = ""  # the name filled in from the generator, replaced when it changes
        with ui.dialog() as self.dialog, ui.card().style("width: 40rem; max-width: 100%"):
            ui.label("Generate a dataset").classes("acc-title")
            self.generator = ui.select({}, label="Generator", on_change=self._generator_chosen).classes("full-width")
            self.generator.props('data-field="generator"').mark("dataset-generator")
            self.doc = ui.label().classes("text-body2 text-grey-8 acc-pre")
            self.params = ui.column().classes("full-width acc-gap-xs")
            with ui.grid(columns=3).classes("full-width"):
                self.name = ui.input("Name", validation={NAME_RULE: lambda v: bool(NAME.fullmatch(v or ""))})
                self.name.props('data-field="dataset-name"').mark("dataset-name")
                self.n = ui.number("Images", value=DEFAULT_N, min=1, max=MAX_N, step=100, precision=0)
                self.n.props('data-field="dataset-n"').mark("dataset-n")
                self.seed = ui.number("Seed", value=0, min=0, step=1, precision=0)
                self.seed.props('data-field="dataset-seed"').mark("dataset-seed")
            self.registry_errors = ui.label().classes("text-negative text-caption")
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=self.dialog.close).props("flat")
                ui.button("Generate", on_click=self._submit).props('data-role="generate-dataset"').mark(
                    "generate-dataset")

    def open(self) -> None:
        self.dialog.open()

    def set_registry(self, listing: dict[str, Any]) -> None:
        """Show the generators as they are now; the chosen one stays chosen (its form is rebuilt if
        its parameters changed)."""
        before = self.items.get(self.generator.value)
        self.items = {item["name"]: item for item in listing["items"]}
        chosen = self.generator.value if self.generator.value in self.items else None
        self.generator.set_options({name: f"{name} — {item['doc']}" if item["doc"] else name
                                    for name, item in self.items.items()}, value=chosen)
        if chosen is not None and before is not None and before["params"] != self.items[chosen]["params"]:
            self._generator_chosen()
        errors = listing["errors"]
        self.registry_errors.set_text(
            f"{len(errors)} generator file(s) failed to load: see Registry errors" if errors else "")

    def _generator_chosen(self) -> None:
        item = self.items.get(self.generator.value)
        self.params.clear()
        self.form = None
        self.doc.set_text(item["doc"] if item else "")
        if item is None:
            return
        if self.name.value in ("", self._suggested):
            self._suggested = suggested_name(item["name"])
            self.name.set_value(self._suggested)
        with self.params:
            self.form = SchemaForm(item["params"].get("schema", {}))

    def _request(self) -> dict[str, Any]:
        """What to send; raises ValueError with a message for the user when something is missing or wrong."""
        if self.generator.value is None:
            raise ValueError("choose a generator")
        name = (self.name.value or "").strip()
        if problem := name_problem(name):
            raise ValueError(problem)
        if self.n.value is None or not 1 <= self.n.value <= MAX_N:
            raise ValueError(f"the number of images must be from 1 to {MAX_N:,}")
        params = self.form.values() if self.form else {}
        return {"generator": self.generator.value, "name": name, "n": int(self.n.value),
                "seed": int(self.seed.value or 0), "params": params}

    async def _submit(self) -> None:
        try:
            request = self._request()
        except ValueError as e:
            self.name.validate()
            ui.notify(str(e), type="warning", multi_line=True)
            return
        job = await act(f"generating {request['name']!r}", self.link.client.generate_dataset, **request)
        if job is not FAILED:
            ui.notify(f"generating {request['name']!r}", type="positive")
            self.dialog.close()
            self.started(job)


# ---- one dataset, or two compared -----------------------------------------------------------------
class DatasetView:
    """The chosen dataset (and the one compared with it): sample grids, histograms, class counts."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.infos: dict[str, dict[str, Any]] = {}  # the ready datasets
        self._grids_for: tuple | None = None  # the request whose grids are shown (or being fetched)
        with ui.row().classes("full-width items-center acc-gap-sm"):
            self.choice = ui.select([], label="dataset", on_change=self.refresh).props("dense").style("width: 12rem")
            self.choice.props('data-role="dataset-choice"').mark("dataset-choice")
            self.other = ui.select([], label="compare with", clearable=True, on_change=self.refresh)
            self.other.props('dense data-role="dataset-compare"').style("width: 12rem").mark("dataset-compare")
            self.target = ui.select([], label="caption / sort by", on_change=self.show_grids).props("dense")
            self.target.style("width: 10rem").props('data-role="grid-target"')
            self.seed = ui.number("sample", value=0, min=0, step=1, precision=0, on_change=self.show_grids)
            self.seed.props('dense data-role="grid-seed"').style("width: 5rem").tooltip("which random sample")
            ui.button(icon="shuffle", on_click=self._resample).props('flat dense round data-role="resample"').tooltip(
                "another random sample")
            self.sort = ui.switch("sort by target", on_change=self.show_grids).props('dense data-role="grid-sort"')
        self.note = ui.label("Choose a dataset (or click one above) to see its images and targets.")
        self.note.classes("text-grey-7")
        self.grids = ui.row().classes("full-width items-start no-wrap")
        self.charts = ui.element().classes("acc-grid")

    def set_datasets(self, infos: dict[str, dict[str, Any]]) -> None:
        """The ready datasets to choose from; a chosen one that is gone is unchosen."""
        self.infos = infos
        for select in (self.choice, self.other):
            select.set_options(list(infos), value=select.value if select.value in infos else None)

    def show(self, name: str) -> None:
        if name in self.infos:
            self.choice.set_value(name)

    def _names(self) -> list[str]:
        """The dataset shown, then the one compared with it, if any."""
        if self.choice.value not in self.infos:
            return []
        other = self.other.value
        return [self.choice.value] + ([other] if other in self.infos and other != self.choice.value else [])

    async def refresh(self) -> None:
        """Everything again, for the datasets now chosen."""
        names = self._names()
        targets = list(dict.fromkeys(t for name in names for t in self.infos[name]["targets"]))
        self.target.set_options(targets, value=self.target.value if self.target.value in targets else
                                next(iter(targets), None))
        self.note.set_visibility(not names)
        await asyncio.gather(self.show_grids(), self._show_charts(names))

    def _resample(self) -> None:
        self.seed.set_value(int(self.seed.value or 0) + 1)

    def _grid_request(self) -> tuple:
        return tuple(self._names()), self.target.value, int(self.seed.value or 0), bool(self.sort.value)

    async def show_grids(self) -> None:
        """A sample grid per dataset shown, side by side, unless these very grids are shown already."""
        request = self._grid_request()
        if request == self._grids_for:
            return
        self._grids_for = request
        names, target, seed, sort = request
        pngs = await asyncio.gather(*(
            fetch(self.link.client.dataset_grid_png, name, n=GRID_IMAGES, seed=seed, sort=sort, columns=GRID_COLUMNS,
                  target=target if target in self.infos[name]["targets"] else None) for name in names))
        if request != self._grids_for:  # the choices changed meanwhile: a newer call draws
            return
        if None in pngs:
            self._grids_for = None  # a failed fetch: the next change tries again
        self.grids.clear()
        with self.grids:
            for name, png, color in zip(names, pngs, COLORS):
                with ui.column().classes("acc-gap-xs").style("flex: 1 1 0; min-width: 0; max-width: 31rem"):
                    ui.label(name).classes("text-weight-medium").style(f"color: {color}")
                    if png is None:
                        ui.label("could not fetch the sample").classes("text-negative")
                        continue
                    image = ui.image(png_source(png)).classes("full-width").style("image-rendering: pixelated")
                    image.props(f'loading=eager no-spinner no-transition data-role="dataset-grid" data-grid="{name}"')
                    image.mark("dataset-grid")

    async def _histograms(self, names: list[str]) -> list[dict[str, Any]] | None:
        """Each dataset's histograms; for two, the targets both have binned alike: over a range that
        covers both (from their descriptions' ranges), all requests in one round."""
        ranges = [self.infos.get(name, {}).get("ranges", {}) for name in names]
        shared = [t for t in ranges[0] if len(names) == 2 and t in ranges[1]]
        common = {t: common_range(*({"min": r[t][0], "max": r[t][1]} for r in ranges)) for t in shared}
        asks = [(i, None, None) for i in range(len(names))] + [(i, t, common[t]) for t in shared for i in range(2)]
        answers = await asyncio.gather(*(
            fetch(self.link.client.dataset_histograms, names[i], bins=BINS, target=t, lo=r and r[0], hi=r and r[1])
            for i, t, r in asks))
        if None in answers:
            return None
        histograms = answers[:len(names)]
        for (i, _, _), binned_alike in zip(asks[len(names):], answers[len(names):]):
            histograms[i]["targets"].update(binned_alike["targets"])
        return histograms

    async def _show_charts(self, names: list[str]) -> None:
        histograms = await self._histograms(names) if names else []
        if names != self._names():  # the choices changed meanwhile: a newer call draws
            return
        self.charts.clear()
        if histograms is None:
            with self.charts:
                ui.label("could not fetch the histograms").classes("text-negative")
            return
        colors = dict(zip(names, COLORS))
        with self.charts:
            for target, series in target_series(names, histograms):
                ui.echart(histogram_options(target, series, colors)).style("height: 15rem").props(
                    f'data-role="dataset-histogram" data-target="{target}"').mark("dataset-histogram")
            classes = [(name, h["classes"]) for name, h in zip(names, histograms) if any(h["classes"])]
            if classes:
                ui.echart(classes_options(classes, colors)).style("height: 15rem").props(
                    'data-role="dataset-classes"').mark("dataset-classes")
            elif names:
                ui.label("no digit labels").classes("text-grey-7")


# ---- the panel ------------------------------------------------------------------------------------
class DatasetsPanel:
    """The trainer's datasets with their generations, [+ Dataset], and the view of one or two."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.infos: dict[str, dict[str, Any]] = {}  # by name: the built-in ones first, then by name
        self.jobs: dict[str, dict[str, Any]] = {}  # the latest generation job per dataset name
        self.dialog = GenerateDialog(link, self.show_job)
        header_with_add("Datasets", "Dataset", self.dialog.open)
        self.box = ui.column().classes("full-width acc-gap-xs")  # the rows: redrawn, so the dialog is not in them
        with ui.dialog().mark("delete-dataset-dialog") as self.confirm, ui.card():
            self.question = ui.label()
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=lambda: self.confirm.submit(False)).props("flat")
                ui.button("Delete", color="negative", on_click=lambda: self.confirm.submit(True)).props(
                    'data-role="confirm-delete"').mark("confirm-delete")
        ui.separator()
        self.view = DatasetView(link)

    async def load(self) -> None:
        """The datasets and their generation jobs, from the trainer."""
        infos, jobs = await asyncio.gather(fetch(self.link.client.datasets), fetch(self.link.client.jobs))
        if infos is None or jobs is None:
            return
        self.infos = {info["name"]: info for info in sorted(infos, key=lambda i: (not i["builtin"], i["name"]))}
        self.jobs = {job["name"]: job for job in sorted(jobs, key=lambda j: j["created"]) if job["kind"] == "dataset"}
        self._draw()
        self.view.set_datasets({name: info for name, info in self.infos.items() if info["status"] == "ready"})

    def show_job(self, job: dict[str, Any]) -> None:
        """A generation job's news (a stream event, or the dialog's answer); its end reloads the list."""
        if job["kind"] != "dataset":
            return
        known = self.jobs.get(job["name"])
        if known is not None and known["id"] == job["id"] and known["status"] in FINISHED:
            return  # the answer to the POST can come after the job's last event
        self.jobs[job["name"]] = job
        self._draw()
        if job["status"] in FINISHED:
            background_tasks.create(self.load(), name="acc-datasets")

    def _running(self, name: str) -> dict[str, Any] | None:
        job = self.jobs.get(name)
        return job if job is not None and job["status"] not in FINISHED else None

    def _draw(self) -> None:
        self.box.clear()
        starting = [name for name in self.jobs if self._running(name) and name not in self.infos]
        with self.box:
            for name in [*self.infos, *starting]:
                self._row(name, self.infos.get(name, {"name": name, "status": "generating", "builtin": False}))

    def _row(self, name: str, info: dict[str, Any]) -> None:
        """One dataset: name (click a ready one to view it), size, generator, targets, status, actions."""
        job = self._running(name)
        status = job["status"] if job else info["status"]
        with ui.row().classes("full-width items-center no-wrap acc-gap-sm").props(f'data-dataset="{name}"').mark(
                f"dataset:{name}"):
            title = ui.label(name).classes("text-weight-medium").props('data-role="dataset-name"')
            if status == "ready":
                title.classes("cursor-pointer").on("click", lambda: self.view.show(name))
            if info.get("n"):
                ui.label(f"{info['n']:,} images").classes("acc-num")
            ui.label(" · ".join(filter(None, [info.get("generator"), ", ".join(info.get("targets", []))]))).classes(
                "acc-note")
            if info.get("builtin"):
                ui.badge("built-in", color="grey")
            ui.space()
            if status in ("queued", "running", "generating"):
                ui.linear_progress(job["progress"] if job else 0, show_value=False).style("width: 8rem").props(
                    'data-role="dataset-progress"')
            label = ui.label(status).props('data-role="dataset-status"').mark("dataset-status")
            if status in ("failed", "cancelled"):
                label.classes("text-negative")
            if job is not None:
                ui.button(icon="stop", on_click=lambda: self._cancel(job["id"])).props(
                    "flat dense round size=sm").tooltip("cancel the generation")
            elif not info.get("builtin"):
                ui.button(icon="delete", on_click=lambda: self._confirm_delete(name)).props(
                    'flat dense round size=sm data-role="delete-dataset"').mark("delete-dataset")
        if job is None and info.get("error"):
            ui.label(info["error"]).classes("text-negative text-caption acc-pre").props('data-role="dataset-error"')

    async def _cancel(self, job_id: str) -> None:
        await act("cancelling the generation", self.link.client.cancel_job, job_id)

    async def _confirm_delete(self, name: str) -> None:
        self.question.set_text(f"Delete dataset {name!r}? Its file is removed from the trainer's workspace.")
        if await self.confirm and await act(f"deleting {name!r}", self.link.client.delete_dataset, name) is not FAILED:
            ui.notify(f"dataset {name!r} deleted", type="positive")
            await self.load()
