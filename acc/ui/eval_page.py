"""`/checkpoints/<id>/eval`: one checkpoint's factoring evaluation (M5, DESIGN §7).

The newest report of the checkpoint, each block with a line on how to read it: the UFR with the
assignment rule; the UFR table (I, τ, L, UFR per concept and the slot each is scored on) beside
MIG and DCI (with DCI's importance model named); each concept's transfer matrix P_c as a heatmap
over its contexts (pairs not compared left blank); the slot x concept information heatmap; per
slot group its traversal grid (with ρ, range and class kept where a measured concept is scored on
it) and its sort-by-activation grid; the attention overlay with entropy and overlap; what is
missing and the scorers' notes. [Run Eval] runs the evaluation when there is no report yet, and
again; its progress comes from the `factoring` events, and the page redraws when it is done (from
this page or another). Links go back to the tree and to a comparison with another checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nicegui import run, ui

from acc.ui.actions import fetch
from acc.ui.client import TrainerError
from acc.ui.factoring import (EvalRunner, attention_rows, bottom_margin, compare_url, figure_image, figure_url,
                              how_to_read, literature_rows, num, numerics_text, slot_info_options, transfer_options,
                              traversal_facts, ufr_rows, ufr_text)
from acc.ui.link import Link
from acc.ui.pages import CHECKPOINT_EVENTS, LivePage

log = logging.getLogger(__name__)

UFR_COLUMNS = [
    {"name": "concept", "label": "concept", "field": "concept", "align": "left"},
    {"name": "slot", "label": "slot S(c)", "field": "slot", "align": "left"},
    {"name": "I", "label": "I", "field": "I", "align": "right"},
    {"name": "tau", "label": "τ", "field": "tau", "align": "right"},
    {"name": "L", "label": "L", "field": "L", "align": "right"},
    {"name": "ufr", "label": "UFR", "field": "ufr", "align": "right"},
    {"name": "leak", "label": "best other slot", "field": "leak", "align": "left"},
]
PAIR_COLUMNS = [{"name": "what", "label": "", "field": "what", "align": "left"},
                {"name": "value", "label": "", "field": "value", "align": "left"}]


def matrix_height(labels: list[str]) -> int:
    """Pixels for a heatmap with `labels` as rows and columns, with room for the rotated column names."""
    return 64 + 24 * len(labels) + bottom_margin(labels)


def find_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The checkpoint with id `key`, else the one named `key` (the API accepts either)."""
    return next((r for r in rows if r["id"] == key), None) or next((r for r in rows if r["name"] == key), None)


def pair_table(rows: list[dict[str, str]], role: str) -> ui.table:
    return ui.table(columns=PAIR_COLUMNS, rows=rows, row_key="what", pagination=0).props(
        f'dense flat hide-header hide-bottom data-role="{role}"').classes("full-width").mark(role)


def draw_report(report: dict[str, Any], checkpoint_id: str) -> None:
    """Every block of a report, in the current container."""
    version = report.get("key")
    with ui.element().classes("acc-cards"):
        with ui.card().style("flex: 0 1 18rem"):
            ui.label("UFR").classes("acc-title")
            ui.label(ufr_text(report)).classes("text-h4 acc-num").props('data-role="ufr-value"').mark("ufr-value")
            ui.label(f"assignment rule: {report.get('assignment_rule', '—')}").props(
                'data-role="assignment-rule"').mark("assignment-rule")
            classifier = report.get("classifier") or {}
            created = report.get("created")
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if isinstance(created, (int, float)) else "—"
            ui.label(f"checkpoint at step {report.get('step', 0):,} · evaluated {when} · digit classifier accuracy "
                     f"{num(classifier.get('accuracy'))} ({classifier.get('source', '—')})").classes("acc-note")
            how_to_read("ufr")
        with ui.card().style("flex: 2 1 30rem"):
            ui.label("UFR per concept").classes("acc-title")
            ui.table(columns=UFR_COLUMNS, rows=ufr_rows(report), row_key="concept", pagination=0).props(
                'dense flat hide-bottom wrap-cells data-role="ufr-table"').classes("full-width").mark("ufr-table")
            how_to_read("concepts")
        with ui.card():
            ui.label("MIG and DCI").classes("acc-title")
            pair_table(literature_rows(report), "literature-table")
            model = (report.get("dci") or {}).get("importance_model", "—")
            ui.label(f"DCI importance model: {model}").classes("text-body2").props(
                'data-role="importance-model"').mark("importance-model")
            how_to_read("literature")

    with ui.card().classes("full-width"):
        ui.label("Transfer matrices P_c").classes("acc-title")
        how_to_read("transfer")
        with ui.element().classes("acc-grid"):
            for name, concept in report.get("concepts", {}).items():
                ui.echart(transfer_options(name, concept)).style(
                    f"height: {matrix_height(concept.get('contexts', []))}px").props(
                    f'data-transfer="{name}"').mark(f"transfer:{name}")

    with ui.card().classes("full-width"):
        ui.label("Slot × concept information").classes("acc-title")
        how_to_read("slot_info")
        slots = (report.get("slot_info") or {}).get("slots", [])
        concepts = (report.get("slot_info") or {}).get("concepts", [])
        ui.echart(slot_info_options(report)).style(
            f"height: {56 + 36 * len(slots) + bottom_margin(concepts)}px; max-width: 40rem").props(
            'data-role="slot-info"').mark("slot-info")

    with ui.card().classes("full-width"):
        ui.label("Slot groups").classes("acc-title")
        with ui.row().classes("full-width no-wrap acc-gap-sm"):
            with ui.column().classes("col acc-gap-0"):
                ui.label("Traversal").classes("text-weight-medium")
                how_to_read("traversal")
            with ui.column().classes("col acc-gap-0"):
                ui.label("Sort by activation").classes("text-weight-medium")
                how_to_read("activation")
        for slot in report.get("slots", {}):
            with ui.column().classes("full-width acc-gap-xs").props(f'data-slot="{slot}"'):
                ui.label(slot).classes("text-subtitle1 text-weight-medium")
                facts = traversal_facts(report, slot)
                ui.label(facts or "no concept is scored on this slot").classes("text-body2").props(
                    'data-role="traversal-facts"').mark(f"traversal-facts:{slot}")
                with ui.element().classes("acc-grid"):
                    figure_image(figure_url(checkpoint_id, "traversal", slot, version), "traversal",
                                 f"traversal of {slot}").mark(f"traversal:{slot}")
                    figure_image(figure_url(checkpoint_id, "activation", slot, version), "activation",
                                 f"sort by activation of {slot}").mark(f"activation:{slot}")

    with ui.element().classes("acc-cards"):
        with ui.card():
            ui.label("Attention").classes("acc-title")
            how_to_read("attention")
            if report.get("attention"):
                figure_image(figure_url(checkpoint_id, "attention", None, version), "attention", "attention overlay")
                pair_table(attention_rows(report), "attention-table")
            else:
                ui.label("This model returns no attention maps.").classes("text-grey-7")
        with ui.card().props('data-role="missing"').mark("missing"):
            ui.label("Missing parts and notes").classes("acc-title")
            how_to_read("missing")
            lines = [f"missing: {p}" for p in report.get("parts_missing", [])] + list(report.get("notes", []))
            for line in lines:
                ui.label(line).classes("text-body2").props('data-role="missing-line"')
            if not lines:
                ui.label("Nothing missing, no notes.").classes("text-grey-7")
            settings = report.get("settings") or {}
            if settings:
                ui.label("settings: " + ", ".join(f"{k} {v}" for k, v in settings.items() if k != "steps")).classes(
                    "acc-note")


class EvalPage(LivePage):
    nav = "checkpoints"
    title = "ACC · evaluation"

    def __init__(self, link: Link, checkpoint: str) -> None:
        self.key = checkpoint  # as in the URL: an id (or a name)
        self.row: dict[str, Any] | None = None
        self.report: dict[str, Any] | None = None
        self.others: dict[str, str] = {}
        super().__init__(link)

    def build(self) -> None:
        with ui.row().classes("full-width items-center acc-gap-sm"):
            ui.link("‹ checkpoints", "/checkpoints").classes("text-body2").props('data-role="back-to-tree"').mark(
                "back-to-tree")
            self.heading = ui.label(f"checkpoint {self.key}").classes("acc-title").props(
                'data-role="eval-title"').mark("eval-title")
            self.facts = ui.label("").classes("acc-note").mark("eval-facts")
            ui.space()
            self.other = ui.select({}, label="compare with", on_change=self._compare).props(
                'dense data-role="compare-with"').style("width: 14rem").mark("compare-with")
            self.runner = EvalRunner(self.link, self.key, self._report_changed)
        self.body = ui.column().classes("full-width acc-gap-sm").props('data-role="eval-body"')
        with self.body:
            ui.label("loading…").classes("text-grey-7")

    async def load(self) -> None:
        rows = await run.io_bound(self.link.client.checkpoints)
        if rows is None:
            return
        self._show_checkpoints(rows)
        if self.row is None:
            return
        report = await run.io_bound(self.link.client.factoring_or_none, self.row["id"])
        jobs = await run.io_bound(self.link.client.jobs)
        self.runner.show_jobs(jobs or [])
        self._draw(report)

    def _show_checkpoints(self, rows: list[dict[str, Any]]) -> None:
        row = find_row(rows, self.key)
        self.row = row
        self.others = {r["id"]: f"{r['name']} · step {r['step']:,}" for r in rows if row is None or r["id"] != row["id"]}
        self.other.set_options(self.others, value=None)
        if row is None:
            self.heading.set_text(f"no checkpoint {self.key!r}")
            self.facts.set_text("")
            self.runner.button.set_enabled(False)
            self.body.clear()
            with self.body:
                ui.label(f"The trainer has no checkpoint {self.key!r} (deleted, or a mistyped URL).").classes(
                    "text-grey-7").mark("no-checkpoint")
                ui.link("back to the checkpoint tree", "/checkpoints")
            return
        self.runner.checkpoint_id = row["id"]
        self.heading.set_text(f"{row['name']} · step {row['step']:,}")
        numerics = numerics_text(row.get("trained_under") or [])
        self.facts.set_text(" · ".join(filter(None, [row.get("branch") or "", f"id {row['id']}",
                                                    numerics and f"trained under {numerics}"])))
        ui.page_title(f"ACC · {row['name']} · evaluation")

    def _draw(self, report: dict[str, Any] | None) -> None:
        self.report = report
        self.runner.has_report(report is not None)
        self.body.clear()
        with self.body:
            if report is None:
                with ui.card().classes("full-width").props('data-role="no-report"').mark("no-report"):
                    ui.label("No factoring report yet").classes("acc-title")
                    ui.label("Run Eval scores how this checkpoint's latent factors the held-out data: UFR with its "
                             "parts, MIG and DCI, traversals, sort-by-activation and attention maps. The first "
                             "evaluation in a workspace also builds the held-out sets and a small digit classifier.")
                    ui.button("Run Eval", icon="analytics", on_click=self.runner.run).props(
                        'no-caps data-role="run-eval-first"').mark("run-eval-first")
                return
            draw_report(report, self.row["id"])

    async def _report_changed(self) -> None:
        """An evaluation of this checkpoint finished: its new report (kept as it was if the fetch fails)."""
        if self.row is None:
            return
        try:
            report = await run.io_bound(self.link.client.factoring_or_none, self.row["id"])
        except TrainerError as e:
            log.info("fetching the new report failed: %s", e)
            self.generation = None  # the next tick loads the page again
            return
        self._draw(report)

    def _compare(self, event: Any) -> None:
        if event.value and self.row is not None:
            ui.navigate.to(compare_url(self.row["id"], event.value))

    async def apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind, data = event["event"], event["data"]
            if kind == "factoring":
                await self.runner.event(data)
            elif kind == "state" and data.get("kind") in CHECKPOINT_EVENTS:
                rows = await fetch(self.link.client.checkpoints)
                if rows is not None:
                    had = self.row
                    self._show_checkpoints(rows)
                    if had is None and self.row is not None:  # it exists now (saved since): load it
                        self.generation = None
