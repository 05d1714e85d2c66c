"""`/compare?a=<id>&b=<id>`: two checkpoints side by side (M5).

Their factoring first: UFR, and each concept's UFR, I, τ, L (and traversal |ρ| and class kept)
for both, the better of each pair marked with a green arrow, the difference b - a beside them
(≈ where it is within the evaluation's own noise);
MIG, DCI and attention overlap the same way. Then per slot group the two traversal grids next to
each other, and the two attention overlays: the evaluator uses fixed seed images and steps, so the
grids line up image for image. Where a checkpoint has no report yet, its [Run Eval] runs one and
the page fills in when it is done. Last, what the compare dialog of the tree used to show: their
differences (tasks, loss weights, steps, metrics) and their curves overlaid from the root of the
tree, parting where they were forked. The tree's [Compare] opens this page for the two ticked
nodes (older as `a`); the pickers at the top choose others (a new URL, so it can be bookmarked).
"""

from __future__ import annotations

import logging
from typing import Any

from nicegui import run, ui

from acc.ui.actions import fetch
from acc.ui.client import TrainerError
from acc.ui.eval_page import find_row, pair_table
from acc.ui.factoring import (BETTER_COLOR, NOISE_SE, EvalRunner, attention_rows, compare_url, comparison_rows,
                              eval_url, figure_image, figure_url, how_to_read, num, traversal_facts)
from acc.ui.link import Link
from acc.ui.pages import CHECKPOINT_EVENTS, LivePage
from acc.ui.tree import COLORS, COMPARE_POINTS, compare_keys, compare_options, differences, fork_step

log = logging.getLogger(__name__)

SIDES = ("a", "b")


def delta_text(row: dict[str, Any]) -> str:
    if row["delta"] is None:
        return "—"
    if row["better"] == "=":
        return "="
    within = f" ≈ within noise (±{NOISE_SE * row['noise']:.2g})" if row["better"] == "≈" else ""
    return f"{row['delta']:+.3g}{within}"


class ComparePage(LivePage):
    nav = "compare"
    title = "ACC · compare"

    def __init__(self, link: Link, a: str | None, b: str | None) -> None:
        self.keys = {"a": a, "b": b}  # as in the URL
        self.rows: dict[str, dict[str, Any]] = {}
        self.chosen: dict[str, dict[str, Any] | None] = {"a": None, "b": None}
        self.reports: dict[str, dict[str, Any] | None] = {"a": None, "b": None}
        self.lineages: list[dict[str, Any] | None] = []
        super().__init__(link)

    # ---- layout --------------------------------------------------------------------------------
    def build(self) -> None:
        self.pickers: dict[str, ui.select] = {}
        self.links: dict[str, ui.link] = {}
        self.runners: dict[str, EvalRunner] = {}
        with ui.row().classes("full-width items-center acc-gap-sm"):
            ui.label("Compare").classes("acc-title")
            for side in SIDES:
                with ui.row().classes("items-center acc-gap-sm no-wrap").props(f'data-side="{side}"'):
                    ui.badge(side).style(f"background: {COLORS[SIDES.index(side)]}")
                    self.pickers[side] = ui.select({}, label=f"checkpoint {side}",
                                                   on_change=lambda e, s=side: self._pick(s, e.value)).props(
                        f'dense data-role="compare-{side}"').style("width: 14rem").mark(f"compare-{side}")
                    self.links[side] = ui.link("evaluation ›", "#").classes("acc-note").props(
                        f'data-role="eval-link-{side}"').mark(f"eval-link-{side}")
                    self.runners[side] = EvalRunner(self.link, self.keys[side] or "", self._report_changed,
                                                    marker=f"run-eval-{side}")
                    self.links[side].set_visibility(False)
                    self.runners[side].button.set_visibility(False)
            ui.space()
            ui.link("‹ checkpoints", "/checkpoints").classes("text-body2")
        self.body = ui.column().classes("full-width acc-gap-sm").props('data-role="compare-body"')
        with self.body:
            ui.label("loading…").classes("text-grey-7")

    def _pick(self, side: str, value: str | None) -> None:
        if value and value != (self.chosen[side] or {}).get("id"):
            keys = {**{s: (self.chosen[s] or {}).get("id") or self.keys[s] for s in SIDES}, side: value}
            ui.navigate.to(compare_url(keys["a"], keys["b"]))

    # ---- loading -------------------------------------------------------------------------------
    async def load(self) -> None:
        rows = await run.io_bound(self.link.client.checkpoints)
        if rows is None:
            return
        self._show_checkpoints(rows)
        ready = [self.chosen[s] for s in SIDES if self.chosen[s] is not None]
        if len(ready) == 2:
            self.lineages = [await run.io_bound(self.link.client.checkpoint_metrics, row["id"],
                                                max_points=COMPARE_POINTS) for row in ready]
            await self._load_reports()
            jobs = await run.io_bound(self.link.client.jobs) or []
            for side in SIDES:
                self.runners[side].show_jobs(jobs)
        self._draw()

    def _show_checkpoints(self, rows: list[dict[str, Any]]) -> None:
        self.rows = {row["id"]: row for row in rows}
        options = {row["id"]: f"{row['name']} · step {row['step']:,}" for row in rows}
        for side in SIDES:
            row = find_row(rows, self.keys[side]) if self.keys[side] else None
            self.chosen[side] = row
            self.pickers[side].set_options(options, value=row["id"] if row else None)
            self.links[side].set_visibility(row is not None)
            self.runners[side].button.set_visibility(row is not None)
            if row is not None:
                self.links[side].props["href"] = eval_url(row["id"])
                self.links[side].update()
                self.runners[side].checkpoint_id = row["id"]

    async def _load_reports(self) -> None:
        for side in SIDES:
            row = self.chosen[side]
            self.reports[side] = None if row is None else await run.io_bound(
                self.link.client.factoring_or_none, row["id"])
            self.runners[side].has_report(self.reports[side] is not None)

    async def _report_changed(self) -> None:
        try:
            await self._load_reports()
        except TrainerError as e:
            log.info("fetching the new reports failed: %s", e)
            self.generation = None  # the next tick loads the page again
            return
        self._draw()

    async def apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind, data = event["event"], event["data"]
            if kind == "factoring":
                for side in SIDES:  # both, if a and b are the same checkpoint: one redraw is enough
                    if self.runners[side].checkpoint_id == data.get("checkpoint"):
                        await self.runners[side].event(data)
                        break
            elif kind == "state" and data.get("kind") in CHECKPOINT_EVENTS:
                rows = await fetch(self.link.client.checkpoints)
                if rows is not None and {r["id"] for r in rows} != set(self.rows):
                    self.generation = None  # a checkpoint came or went: load the page again

    # ---- drawing -------------------------------------------------------------------------------
    def _draw(self) -> None:
        self.body.clear()
        with self.body:
            a, b = self.chosen["a"], self.chosen["b"]
            if a is None or b is None:
                missing = [f"{s} ({self.keys[s]!r} is not a checkpoint)" if self.keys[s] else s
                           for s in SIDES if self.chosen[s] is None]
                ui.label("Pick two checkpoints to compare: " + ", ".join(missing) + ". In the checkpoint tree, tick "
                         "two nodes and press Compare.").classes("text-grey-7").mark("pick-two")
                return
            self._draw_scores()
            self._draw_traversals()
            self._draw_attention()
            self._draw_history()

    def _names(self) -> tuple[str, str]:
        return self.chosen["a"]["name"], self.chosen["b"]["name"]

    def _draw_scores(self) -> None:
        name_a, name_b = self._names()
        with ui.card().classes("full-width"):
            ui.label("Factoring").classes("acc-title")
            ui.label("The better value of each pair has a green arrow (higher is better, except attention overlap); "
                     "Δ is b - a. A difference within twice its standard error (the evaluation's own noise: the "
                     "probe seeds for UFR and its parts, the 5 seed images for a traversal) is marked ≈ "
                     "and gets no arrow. Training is noisier than that: the same recipe at another seed, or on "
                     "other hardware or thread counts, can move UFR by tenths (README), so compare branches "
                     "over several seeds before trusting one arrow.").classes("acc-note")
            how_to_read("ufr")
            how_to_read("concepts")
            missing = [f"{side} ({self.chosen[side]['name']})" for side in SIDES if self.reports[side] is None]
            if missing:
                ui.label("No factoring report yet for " + " and ".join(missing) + ": press its Run Eval above.").classes(
                    "text-body2 text-deep-orange-9").mark("compare-missing-report")
            grid = ui.grid(columns="auto auto auto auto").classes("items-center text-body2").style("gap: .1rem 1.5rem")
            with grid.props('data-role="compare-scores"').mark("compare-scores"):
                for text in ("", f"a · {name_a}", f"b · {name_b}", "Δ (b - a)"):
                    ui.label(text).classes("text-weight-medium")
                for row in comparison_rows(self.reports["a"], self.reports["b"]):
                    ui.label(row["what"]).classes("text-weight-medium" if row["group"] == "overall" else "")
                    for side in SIDES:
                        best = row["better"] == side
                        text = ("▲ " if best else "") + num(row[side])
                        cell = ui.label(text).classes("acc-num" + (f" {BETTER_COLOR} text-weight-bold" if best else ""))
                        key = row["what"].replace(" ", "_")
                        cell.props(f'data-cell="{key}:{side}" data-better="{str(best).lower()}"').mark(f"cmp:{key}:{side}")
                    ui.label(delta_text(row)).classes("acc-num acc-note")

    def _draw_traversals(self) -> None:
        reports = self.reports
        slots = list(dict.fromkeys([*((reports["a"] or {}).get("slots") or {}), *((reports["b"] or {}).get("slots") or {})]))
        with ui.card().classes("full-width"):
            ui.label("Traversals per slot group").classes("acc-title")
            how_to_read("traversal")
            if not slots:
                ui.label("No traversals: neither checkpoint has a report yet.").classes("text-grey-7")
            for slot in slots:
                ui.label(slot).classes("text-subtitle1 text-weight-medium")
                with ui.element().classes("acc-grid").props(f'data-compare-slot="{slot}"'):
                    for side in SIDES:
                        self._figure(side, "traversal", slot)

    def _figure(self, side: str, kind: str, slot: str | None) -> None:
        report, row = self.reports[side], self.chosen[side]
        with ui.column().classes("acc-gap-xs").props(f'data-side="{side}"'):
            ui.label(f"{side} · {row['name']}").classes("acc-note")
            if report is None:
                ui.label("no report yet").classes("text-grey-7")
            elif kind == "traversal" and slot not in (report.get("slots") or {}):
                ui.label(f"this model has no slot group {slot!r}").classes("text-grey-7")
            elif kind == "attention" and not report.get("attention"):
                ui.label("this model returns no attention maps").classes("text-grey-7")
            else:
                figure_image(figure_url(row["id"], kind, slot, report.get("key")), f"compare-{kind}",
                             f"{kind} of {row['name']}").mark(f"cmp-{kind}:{slot or 'all'}:{side}")
                if kind == "traversal":
                    ui.label(traversal_facts(report, slot) or "no concept is scored on this slot").classes("text-body2")
                else:
                    pair_table(attention_rows(report), f"attention-table-{side}")

    def _draw_attention(self) -> None:
        with ui.card().classes("full-width"):
            ui.label("Attention").classes("acc-title")
            how_to_read("attention")
            with ui.element().classes("acc-grid"):
                for side in SIDES:
                    self._figure(side, "attention", None)

    def _draw_history(self) -> None:
        a, b = self.chosen["a"], self.chosen["b"]
        with ui.card().classes("full-width"):
            ui.label("Configuration and curves").classes("acc-title")
            columns = [{"name": "field", "label": "", "field": "field", "align": "left"},
                       {"name": "a", "label": f"a · {a['name']}", "field": "a", "align": "left"},
                       {"name": "b", "label": f"b · {b['name']}", "field": "b", "align": "left"},
                       {"name": "same", "label": "", "field": "same"}]
            ui.table(columns=columns, rows=differences(a, b), row_key="field", pagination=0).props(
                'dense flat wrap-cells hide-bottom data-role="compare"').classes("full-width").mark("compare-table")
            if len(self.lineages) != 2 or None in self.lineages:
                ui.label("The curves could not be fetched; see the banner.").classes("acc-note")
                return
            curves_a, curves_b = self.lineages
            forked_at = fork_step(self.rows, a["id"], b["id"])
            with ui.element().classes("acc-grid"):
                for key in compare_keys(curves_a, curves_b):
                    curves = [(row["name"], lineage.get(key)) for row, lineage in zip((a, b), self.lineages)]
                    ui.echart(compare_options(key, curves, forked_at)).style("height: 14rem").props(
                        f'data-compare-key="{key}"').mark(f"compare:{key}")
