"""The dashboard's pages, the training page, and `run_dashboard`, which serves them (`acc ui`, `acc up`).

`dashboard_page` routes every path to its page (full page loads, so each URL can be bookmarked):
`/` training (`Dashboard`, below), `/checkpoints` the checkpoint tree (`acc.ui.pages`),
`/checkpoints/<id>/eval` a checkpoint's factoring evaluation (`acc.ui.eval_page`) and
`/compare?a=<id>&b=<id>` two checkpoints side by side (`acc.ui.compare_page`); the header links
them. Each open page reads the process's one `Link` on its own timer, as the training page does.

One `Link` per process reads the trainer's events; every open training page is a `Dashboard` that pulls
what is new from the link four times a second (`tick`) and applies it as one batch: metric points
to the charts, state to the status bar and task rows, evaluations to the metrics table, registry
changes to the [+ Task] and [+ Dataset] dialogs, the recipes and the errors panel, jobs to the
recipes and the datasets, checkpoint and factoring events to the checkpoint tree. After a (re)connection, or when
the trainer starts a new run, the page fetches everything again from the API, so what it shows
always comes from the trainer's store, across page reloads and trainer restarts (earlier runs: the
run picker above the curves). The model panel grows the model (`acc.ui.expand_dialog`); the
charts mark where the model grew along the shown run's lineage. The devices panel below it polls
the devices once a second and chooses the train and eval devices (`acc.ui.devices_panel`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from nicegui import app, background_tasks, ui

from acc.server.auth import check_bind
from acc.ui.actions import fetch
from acc.ui.charts import CHARTS_JS, SMOOTHING, ChartGrid, FirstHistory, register_routes
from acc.ui.compare_page import ComparePage
from acc.ui.datasets import DatasetsPanel
from acc.ui.devices_panel import DevicesPanel
from acc.ui.eval_page import EvalPage
from acc.ui.expand_dialog import ModelPanel, expansion_markers
from acc.ui.factoring import FigureRoute
from acc.ui.link import Link, metric_points
from acc.ui.login import install_login, session_middleware_kwargs, storage_secret
from acc.ui.pages import CHECKPOINT_EVENTS, STYLE, TICK_S, CheckpointsPage, NotFoundPage
from acc.ui.panels import REGISTRY_KINDS, EvalPanel, ReconstructionPanel, RegistryErrorsPanel
from acc.ui.recipes import RecipesPanel
from acc.ui.status import Banner, StatusBar
from acc.ui.tasks_panel import TasksPanel
from acc.ui.tree import CheckpointTree

log = logging.getLogger(__name__)

RECON_EVERY_S = 10.0


class Dashboard:
    """One open training page (`/`)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.generation: int | None = None  # the link generation this page has loaded
        self.cursor = 0
        self.run_id: int | None = None
        self.state: dict[str, Any] | None = None
        self._runs: list[dict[str, Any]] = []  # GET /api/runs, as of the last reload
        self._retry_at = 0.0
        self._build()
        self._first_load = None
        if link.connection.status == "connected":  # load while the browser starts the page
            self.charts.first = FirstHistory()  # the browser fetches the curves' history itself
            self._first_load = background_tasks.create(self.reload(), name="acc-load")
        ui.timer(TICK_S, self.tick)

    # ---- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        ui.add_css(STYLE)
        ui.add_head_html(CHARTS_JS)
        ui.page_title("ACC")
        with ui.header().classes("bg-blue-grey-10 q-px-md q-py-sm"):
            self.status = StatusBar(self.link, self._save_checkpoint)
        self.banner = Banner(self.link)
        with ui.row().classes("acc-layout full-width items-start no-wrap"):
            with ui.column().classes("acc-main acc-gap-sm"):
                self._build_charts()
                with ui.card().classes("full-width"):
                    self.datasets = DatasetsPanel(self.link)
            with ui.column().classes("acc-side"):
                with ui.card().classes("full-width q-py-sm"):
                    self.model = ModelPanel(self.link)
                with ui.card().classes("full-width q-py-sm"):
                    self.devices = DevicesPanel(self.link, on_show=self.status.show_devices)
                self.tasks = TasksPanel(self.link)
                with ui.card().classes("full-width"):
                    self.recon = ReconstructionPanel(self.link)
                with ui.card().classes("full-width"):
                    self.evals = EvalPanel(self.link)
                with ui.card().classes("full-width"):
                    self.checkpoints = CheckpointTree(self.link)
                with ui.card().classes("full-width"):
                    self.recipes = RecipesPanel(self.link)
                with ui.card().classes("full-width"):
                    self.registry_errors = RegistryErrorsPanel()

    def _build_charts(self) -> None:
        with ui.row().classes("full-width items-center"):
            ui.label("Curves").classes("acc-title")
            ui.label("smoothing")
            # Smoothing and log scale are drawn in the browser: no round trip, nothing re-sent.
            ui.slider(min=0, max=0.99, step=0.01, value=SMOOTHING).style("width: 10rem").props("label").on(
                "update:model-value", js_handler="(v) => accCharts.restyle({smoothing: v})")
            ui.switch("log scale").on("update:model-value", js_handler="(v) => accCharts.restyle({log: v})")
            ui.space()
            # Past runs stay in the store: after a trainer restart (a new run) the old curves are one click away.
            self.runs = ui.select({}, label="run", on_change=self._view_run).props("dense").style("width: 16rem")
        sections = {}
        for name, title in (("loss", "Losses"), ("eval", "Evaluation")):
            ui.label(title).classes("text-body2 text-grey-7")
            sections[name] = ui.element().classes("acc-grid")
        with ui.expansion("Training (lr, samples/s, gradient norm)").classes("full-width"):
            sections["other"] = ui.element().classes("acc-grid")
        self.charts = ChartGrid(sections, self.link.client.metrics, self.link.keys)

    async def _save_checkpoint(self) -> None:
        await self.checkpoints.save()

    async def _refresh_runs(self) -> None:
        runs = await fetch(self.link.client.runs)
        if runs is not None:
            self._runs = runs
            live = self.link.state["run_id"] if self.link.state else None
            labels = {run["id"]: f"{run['id']} · {run['name']}" + (" (live)" if run["id"] == live else "")
                      for run in runs}
            self.runs.set_options(labels, value=self.charts.run or live)

    async def _view_run(self, event: Any) -> None:
        live = self.link.state["run_id"] if self.link.state else None
        run = None if event.value in (None, live) else event.value  # None: the trainer's run, live
        if run != self.charts.run:
            self.charts.run = run
            self._show_markers()
            await self.charts.load()

    def _show_markers(self) -> None:
        """Mark on the charts where the model grew, along the lineage of the run they show."""
        live = self.link.state["run_id"] if self.link.state else None
        self.charts.set_markers(expansion_markers(self._runs, list(self.checkpoints.rows.values()),
                                                  self.charts.run or live))

    # ---- keeping up with the trainer -------------------------------------------------------------
    async def tick(self) -> None:
        connection = self.link.connection
        self.banner.show(connection)
        if connection.status != "connected" or time.monotonic() < self._retry_at:
            return
        if self._first_load is not None and not self._first_load.done():
            return
        if self.generation != self.link.generation:
            await self.reload()
            return
        self.cursor, events, complete = self.link.events_since(self.cursor)
        if not complete:  # this page fell too far behind: the store has what it missed
            await self.charts.load()
        self._apply(events)
        self._show_state()
        for key in await self.charts.flush():
            background_tasks.create(self.charts.load([key]), name="acc-refetch")
        training = self.state is not None and self.state["status"] == "running"
        if training and time.monotonic() - self.recon.fetched_at > RECON_EVERY_S:
            await self.recon.refresh()

    async def reload(self) -> None:
        """Everything again from the API: on open, after a reconnection, for a new run."""
        generation, self.cursor = self.link.generation, self.link.cursor  # events after this apply on top
        try:
            self._show_state()
            await asyncio.gather(self.charts.load(), self.evals.load(), self.checkpoints.load_all(),
                                 self.recipes.load(), self.datasets.load(), self._refresh_runs(),
                                 self.recon.refresh(), self.model.load(),
                                 *map(self._refresh_registry, REGISTRY_KINDS))
            self._show_markers()  # from the runs and checkpoints just fetched
        except Exception:  # never let one bad answer take the page down; try again shortly
            log.exception("dashboard reload failed")
            self._retry_at = time.monotonic() + 2
            return
        self.generation = generation

    def _apply(self, events: list[dict[str, Any]]) -> None:
        latest: dict[str, float] = {}
        for event in events:
            kind, data = event["event"], event["data"]
            if kind == "metrics":
                for step, values in metric_points(data):
                    self.charts.add(step, values)
                    latest.update(values)
            elif kind == "eval":
                self.charts.add(data["step"], {f"eval/{task}/{metric}": value
                                               for task, metrics in data["results"].items()
                                               for metric, value in metrics.items()})
                self.evals.add(data)
                background_tasks.create(self.recon.refresh(), name="acc-recon")
            elif kind == "state" and data.get("kind") in CHECKPOINT_EVENTS:
                background_tasks.create(self.checkpoints.refresh(), name="acc-checkpoints")
            elif kind == "state" and data.get("kind") == "devices":  # another tab changed the roles
                background_tasks.create(self.devices.refresh(), name="acc-devices")
            elif kind == "factoring":
                background_tasks.create(self.checkpoints.show_factoring(data), name="acc-factoring")
            elif kind == "registry":
                background_tasks.create(self._refresh_registry(data["kind"]), name="acc-registry")
            elif kind == "job":
                self.recipes.show_job(data)
                self.datasets.show_job(data)
            elif kind == "dataset" and data["status"] in ("ready", "deleted"):  # also from recipes, other tabs
                background_tasks.create(self.datasets.load(), name="acc-datasets")
            elif kind == "error":
                ui.notify(data["message"], type="warning", multi_line=True, close_button=True)
        if latest:
            self.tasks.show_losses(latest)

    def _show_state(self) -> None:
        state = self.link.state
        if state is None or state is self.state:
            return
        previous, self.state = self.state, state
        self.status.show(state)
        self.checkpoints.show_current(state["parent_checkpoint"])
        if previous is None or state["tasks"] is not previous["tasks"]:
            self.tasks.sync(state)
        if self.run_id is not None and state["run_id"] != self.run_id:  # a checkpoint was loaded
            self.generation = None  # the next tick fetches the new run's history
        self.run_id = state["run_id"]

    async def _refresh_registry(self, kind: str) -> None:
        self._show_registry(kind, await fetch(self.link.client.registry, kind))

    def _show_registry(self, kind: str, listing: dict[str, Any] | None) -> None:
        if listing is None:
            return
        self.registry_errors.show(kind, listing["errors"])
        if kind == "tasks":
            self.tasks.dialog.set_registry(listing)
        elif kind == "generators":
            self.datasets.dialog.set_registry(listing)
        elif kind == "recipes":
            self.recipes.set_registry(listing)


def route(path: str) -> tuple[str, dict[str, str]]:
    """Which page a path is, with its arguments: ("training" | "checkpoints" | "eval" | "compare" |
    "missing", {...})."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return "training", {}
    if parts == ["checkpoints"]:
        return "checkpoints", {}
    if len(parts) == 3 and parts[0] == "checkpoints" and parts[2] == "eval":
        return "eval", {"checkpoint": parts[1]}
    if parts == ["compare"]:
        return "compare", {}
    return "missing", {}


def dashboard_page(link: Link) -> Callable[[Request], None]:
    """The root page function for `ui.run`: NiceGUI renders it for every path that no other route
    has, and it builds the page of that path (a new one per visit)."""
    register_routes()
    FigureRoute.register(link)

    def page(request: Request) -> None:
        FigureRoute.register(link)  # also where a test harness reset the routes since
        which, args = route(request.url.path)
        if which == "training":
            Dashboard(link)
        elif which == "checkpoints":
            CheckpointsPage(link)
        elif which == "eval":
            EvalPage(link, args["checkpoint"])
        elif which == "compare":
            ComparePage(link, request.query_params.get("a") or None, request.query_params.get("b") or None)
        else:
            NotFoundPage(link, request.url.path)
    return page


def run_dashboard(trainer_url: str, token: str | None, host: str = "127.0.0.1", port: int = 8080,
                  show: bool = False, ui_token: str | None = None) -> None:
    """Serve the dashboard for the trainer at `trainer_url` (whose token is `token`) until interrupted.
    With `ui_token` every page asks for it first (`acc.ui.login`); binding anything but loopback
    without one, or with one too short to resist guessing, is a ValueError before anything starts."""
    check_bind(host, ui_token, what="dashboard", option="--ui-token", env="ACC_UI_TOKEN")
    login: dict[str, Any] = {}
    if ui_token:
        install_login(app, ui_token)
        login = {"storage_secret": storage_secret(ui_token), "session_middleware_kwargs": session_middleware_kwargs()}
    link = Link(trainer_url, token)
    app.on_startup(link.start)
    app.on_shutdown(link.stop)
    ui.run(dashboard_page(link), host=host, port=port, show=show, reload=False, title="ACC",
           favicon="◆", show_welcome_message=False, tailwind=False, **login)
