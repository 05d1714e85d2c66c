"""What every page of the dashboard shares, and the checkpoint tree's own page.

The dashboard has a few pages, each at its own URL (bookmarkable; `acc.ui.app.dashboard_page`
routes them): training at `/`, the checkpoint tree at `/checkpoints`, a checkpoint's factoring
evaluation at `/checkpoints/<id>/eval` (`acc.ui.eval_page`) and two checkpoints side by side at
`/compare?a=<id>&b=<id>` (`acc.ui.compare_page`). Each open page reads the process's one `Link` on
its own timer, from its own cursor, as the training page does: a `LivePage` loads everything it
shows from the API when it opens (and again after a reconnection, or when it fell too far behind
the events), then applies the events that concern it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nicegui import background_tasks, ui

from acc.ui.client import TrainerError
from acc.ui.link import Link
from acc.ui.status import Banner, PageHeader
from acc.ui.tree import CheckpointTree

log = logging.getLogger(__name__)

TICK_S = 0.25  # how often a page applies new events: a new step shows in well under a second
CHECKPOINT_EVENTS = {"checkpoint", "checkpoint_loaded", "checkpoint_deleted"}  # a fork is a load into a new branch

# The page's own few styles; everything else is Quasar's classes. NiceGUI's Tailwind is off: its
# in-browser compiler costs a noticeable part of the first draw.
STYLE = """
.acc-layout { gap: 1rem; padding: 0 .5rem; }
.acc-main { flex: 1 1 0; min-width: 0; }
.acc-side { width: 30rem; flex-shrink: 0; gap: 1rem; }
.acc-page { gap: 1rem; padding: 0 .5rem 2rem; }
.acc-grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: .5rem; width: 100%; }
.acc-cards { display: flex; flex-wrap: wrap; gap: 1rem; width: 100%; align-items: flex-start; }
.acc-cards > .q-card { flex: 1 1 22rem; min-width: 0; }
.acc-chart { width: 100%; height: 13rem; overflow: hidden; }
.acc-chart .u-title { font-size: 12px; font-weight: normal; height: auto; line-height: 1.5; }
.acc-chart .u-legend { font-size: 11px; }
.acc-title { font-size: 1.1rem; font-weight: 500; }
.acc-note { font-size: .75rem; color: #757575; }
.acc-num { font-variant-numeric: tabular-nums; }
.acc-mono { font-family: monospace; }
.acc-pre { white-space: pre-wrap; }
.acc-gap-0 { gap: 0; }
.acc-gap-xs { gap: .25rem; }
.acc-gap-sm { gap: .5rem; }
@media (max-width: 1023px) { .acc-layout { flex-wrap: wrap; } .acc-side { width: 100%; } }
@media (max-width: 767px) { .acc-grid { grid-template-columns: minmax(0, 1fr); } }
"""


class LivePage:
    """One open page other than training: a header with the links, the banner, `build()`'s content;
    `load()` fetches what it shows, `apply(events)` applies the link's events to it."""

    nav: str | None = None  # which header link is this page's
    title = "ACC"

    def __init__(self, link: Link) -> None:
        self.link = link
        self.generation: int | None = None  # the link generation this page has loaded
        self.cursor = 0
        self._retry_at = 0.0
        ui.add_css(STYLE)
        ui.page_title(self.title)
        with ui.header().classes("bg-blue-grey-10 q-px-md q-py-sm"):
            self.header = PageHeader(self.nav)
        self.banner = Banner(link)
        with ui.column().classes("acc-page full-width") as self.root:
            self.build()
        self._first_load = None
        if link.connection.status == "connected":  # load while the browser starts the page
            self._first_load = background_tasks.create(self.reload(), name="acc-page-load")
        ui.timer(TICK_S, self.tick)

    # ---- what a page defines ---------------------------------------------------------------------
    def build(self) -> None:
        """The page's elements (inside `self.root`)."""

    async def load(self) -> None:
        """Everything the page shows, from the API; raise TrainerError to be tried again shortly."""

    async def apply(self, events: list[dict[str, Any]]) -> None:
        """New events from the link, in order."""

    # ---- keeping up with the trainer -------------------------------------------------------------
    async def tick(self) -> None:
        connection = self.link.connection
        self.banner.show(connection)
        self.header.show(self.link.state)
        if connection.status != "connected" or time.monotonic() < self._retry_at:
            return
        if self._first_load is not None and not self._first_load.done():
            return
        if self.generation != self.link.generation:
            await self.reload()
            return
        cursor, events, complete = self.link.events_since(self.cursor)
        if not complete:  # fell too far behind: the API has what it missed
            await self.reload()
            return
        self.cursor = cursor
        if events:
            with self.root:
                await self.apply(events)

    async def reload(self) -> None:
        generation, self.cursor = self.link.generation, self.link.cursor  # events after this apply on top
        try:
            with self.root:  # a context for what it creates, also from a background task
                await self.load()
        except TrainerError as e:  # the trainer went away meanwhile: the banner says so; try again
            log.info("page load failed: %s", e)
            self._retry_at = time.monotonic() + 2
            return
        except Exception:  # never let one bad answer take the page down; try again shortly
            log.exception("page load failed")
            self._retry_at = time.monotonic() + 2
            return
        self.generation = generation


class CheckpointsPage(LivePage):
    """`/checkpoints`: the checkpoint tree on a page of its own, with [Run Eval] on any node."""

    nav = "checkpoints"
    title = "ACC · checkpoints"

    def build(self) -> None:
        with ui.card().classes("full-width"):
            self.tree = CheckpointTree(self.link)
        ui.label("Select a node to load it, fork a branch from it, delete it or run its factoring evaluation; "
                 "'eval ›' opens a checkpoint's evaluation page; tick two and Compare puts them side by side.").classes(
            "acc-note")

    async def load(self) -> None:
        await self.tree.load_all()
        self._show_current()

    async def apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind, data = event["event"], event["data"]
            if kind == "state" and data.get("kind") in CHECKPOINT_EVENTS:
                background_tasks.create(self.tree.refresh(), name="acc-checkpoints")
            elif kind == "factoring":
                await self.tree.show_factoring(data)
        self._show_current()

    def _show_current(self) -> None:
        if self.link.state is not None:
            self.tree.show_current(self.link.state.get("parent_checkpoint"))


class NotFoundPage(LivePage):
    """Any other path: says so, with the header's links."""

    title = "ACC · not found"

    def __init__(self, link: Link, path: str) -> None:
        self.path = path
        super().__init__(link)

    def build(self) -> None:
        ui.label(f"There is no page at {self.path}.").classes("acc-title").mark("not-found")
        ui.link("training", "/")
        ui.link("checkpoints", "/checkpoints")
