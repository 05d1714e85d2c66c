"""The factoring evaluation (M5) in the dashboard: its report as tables and heatmaps, its figures, [Run Eval].

The pure parts turn a FactoringReport (DESIGN §4, §7) into what the pages draw: the UFR table,
MIG and DCI, ECharts heatmaps of each concept's transfer matrix P_c and of the slot x concept
information, each slot group's traversal facts, and the side-by-side rows of two reports with the
better value of each marked. `HOW_TO_READ` says in a sentence or two what each block means.

Figures are PNGs the trainer draws; the browser cannot send the trainer's token, so the dashboard
process serves them at `/_acc/figures/<checkpoint>/<kind>.png?group=<slot>&v=<report key>`
(`FigureRoute`), fetching them with its own client (behind the dashboard's own login, if any). The
trainer serves the newest report's figures only; `v` just changes the URL when the report does.

`EvalRunner` is the [Run Eval] button of one checkpoint with its job's progress, fed by the
`factoring` events of the page's `Link`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Response
from nicegui import app, run, ui

from acc.ui.actions import FAILED, act
from acc.ui.client import TrainerError
from acc.ui.link import Link

log = logging.getLogger(__name__)

FIGURE_KINDS = ("traversal", "activation", "attention")
FIGURE_PATH = "/_acc/figures"
SLOT = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what a slot group (or a checkpoint id) may look like in a figure URL
RUNNING = ("queued", "running")
HEAT = ["#fff7ec", "#fee8c8", "#fdbb84", "#ef6548"]  # light to strong; black labels stay readable
BETTER_COLOR = "text-positive"

HOW_TO_READ = {
    "ufr": "UFR asks whether each concept lives in its own slot and keeps working outside the data it was "
           "fitted on: UFR_c = (I·τ·L)^(1/3), and UFR is their mean over concepts. 1 is perfect; a concept "
           "near 0 failed at least one of the three. The ± is the evaluation's own noise (over its probe "
           "seeds); training the same recipe again, at another seed or under other numerics (see \"trained "
           "under\"), moves UFR far more.",
    "concepts": "I (informativeness): how well a linear probe on the concept's slot predicts it in the context "
                "it was fitted on (R² clipped to 0..1; for digit, chance-corrected balanced accuracy); good is "
                "near 1. τ (transfer): how much of that survives when the probe fitted in one context is scored "
                "in another; near 1 means the code does not change with digit class, data source or the other "
                "factor. L (locality): how much more the assigned slot knows about the concept than the best "
                "other single slot, on an information scale; 1: nowhere else, 0: another slot knows as much.",
    "literature": "MIG: the gap in mutual information between the two single latent dimensions that know most "
                  "about a concept, over its entropy; near 1 when one dimension carries it alone, low for slot "
                  "codes that spread a concept over a slot's dimensions (which UFR does not penalise). DCI "
                  "(Eastwood & Williams), from each dimension's importance for each concept: disentanglement "
                  "(each dimension serves one concept), completeness (each concept sits in few dimensions), "
                  "informativeness (how well the concepts are predicted); all 0..1, higher is better.",
    "transfer": "Row A: the context the probe was fitted on; column B: the context it is scored on. The diagonal "
                "gives I, each off-diagonal cell against its column's diagonal gives τ. Blank cells are pairs "
                "that are not compared (contexts of different families).",
    "slot_info": "Information (nats) that each slot alone holds about each concept, from a held-out probe on that "
                 "slot. A well-factored model has one strong cell per column, in the slot the concept is scored "
                 "on (outlined); a second strong cell in a column is leakage, and lowers L.",
    "traversal": "Each row is one fixed seed image; left to right the slot walks along its principal direction "
                 "from -2 to +2 sd while the other slots stay fixed. Clean: the concept changes steadily (|ρ| "
                 "near 1, a clear range) while the digit stays the same (class kept near 1).",
    "activation": "The held-out images lowest (first block) and highest (second block) along the slot's "
                  "principal direction, captioned with measured thickness (t), slant (s) and class (c). Clean: "
                  "the two ends differ in the slot's concept and in nothing else.",
    "attention": "Where each slot's query looks over fixed input digits (top row), scaled to each map's peak. "
                 "Entropy in nats, out of the maximum a uniform map has: lower is more focused. Overlap (0..1, "
                 "histogram intersection of two slots' maps): lower means the slots look at different parts.",
    "missing": "Parts of the evaluation that could not be computed for this model, and notes from the scorers.",
}


# ---- pure helpers ---------------------------------------------------------------------------------
def num(value: Any, digits: int = 3) -> str:
    """A number for a table: `digits` significant places; a dash for None."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def num_se(value: Any, se: float | None, digits: int = 3) -> str:
    """`num(value)`, with ` ± se` (two significant places) where its standard error is known."""
    return num(value, digits) + ("" if se is None or value is None else f" ± {se:.2g}")


def ufr_text(report: dict[str, Any]) -> str:
    """The report's UFR to 3 decimals, ± its standard error over the probe seeds where it has one."""
    ufr, se = report.get("ufr"), report.get("ufr_se")
    return "—" if ufr is None else f"{ufr:.3f}" + ("" if se is None else f" ± {se:.2g}")


def numerics_text(trained_under: list[dict[str, Any]]) -> str:
    """What a checkpoint's steps since its parent ran under, e.g. "cpu AMD EPYC · AVX2 · 2 threads ·
    torch 2.13.0+cpu", changes joined by "then"; "" for none (no steps, or a checkpoint from before).
    Checkpoints from before the CPU model was recorded show without it."""
    def one(entry: dict[str, Any]) -> str:
        if "gpu" in entry:
            where = f"{entry['device']} {entry['gpu']} · CUDA {entry.get('cuda')}"
        else:
            threads = entry.get("threads")
            plural = "" if threads == 1 else "s"
            model = f"{entry['cpu_model']} · " if entry.get("cpu_model") else ""
            where = f"{entry.get('device', 'cpu')} {model}{entry.get('cpu_capability', '')} · {threads} thread{plural}"
        ranks = f" · {entry['ranks']} ranks" if entry.get("ranks", 1) > 1 else ""
        return f"{where.strip()}{ranks} · torch {entry.get('torch')}"
    return " then ".join(one(entry) for entry in trained_under)


def eval_url(checkpoint_id: str) -> str:
    return f"/checkpoints/{quote(checkpoint_id, safe='')}/eval"


def compare_url(a: str | None, b: str | None) -> str:
    query = urlencode({k: v for k, v in (("a", a), ("b", b)) if v})
    return "/compare" + (f"?{query}" if query else "")


def figure_url(checkpoint_id: str, kind: str, group: str | None = None, version: str | None = None) -> str:
    """Where the dashboard serves a figure of the newest report; `version` (the report's key) makes
    the URL change with the report, so that a page redrawn for a new report loads the new figures."""
    params = {k: v for k, v in (("group", group), ("v", version)) if v}
    return f"{FIGURE_PATH}/{quote(checkpoint_id, safe='')}/{kind}.png" + (f"?{urlencode(params)}" if params else "")


def slot_concepts(report: dict[str, Any]) -> dict[str, str]:
    """slot group -> the concept scored on it."""
    return {info["slot"]: name for name, info in report.get("concepts", {}).items()}


def ufr_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per concept: the slot it is scored on, I, τ, L, UFR (each ± its standard error over
    the probe seeds where the report has one), and where it leaks most."""
    rows = []
    for name, c in report.get("concepts", {}).items():
        info = c.get("info") or {}
        leak = info.get("best_other_slot")
        se = c.get("se") or {}
        rows.append({"concept": name, "slot": c.get("slot", "—"), "kind": c.get("kind", ""),
                     **{key: num_se(c.get(key), se.get(key)) for key in ("I", "tau", "L", "ufr")},
                     "leak": f"{leak}: {num(info.get('best_other'))} nats (own {num(info.get('own'))})" if leak else "—"})
    return rows


def literature_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """MIG and DCI: overall first, then per concept."""
    mig, dci = report.get("mig") or {}, report.get("dci") or {}
    rows = [{"what": "MIG", "value": num(mig.get("mig"))},
            {"what": "DCI disentanglement", "value": num(dci.get("disentanglement"))},
            {"what": "DCI completeness", "value": num(dci.get("completeness"))},
            {"what": "DCI informativeness", "value": num(dci.get("informativeness"))}]
    per_mig, per_dci = mig.get("per_concept") or {}, dci.get("per_concept") or {}
    for name in dict.fromkeys([*per_mig, *per_dci]):
        parts = [f"MIG {num((per_mig.get(name) or {}).get('mig'))}",
                 f"C {num((per_dci.get(name) or {}).get('completeness'))}",
                 f"I {num((per_dci.get(name) or {}).get('informativeness'))}"]
        rows.append({"what": f"  {name}", "value": " · ".join(parts)})
    return rows


def _left_margin(labels: list[str]) -> int:
    return min(220, 16 + 6 * max((len(s) for s in labels), default=4))


def bottom_margin(labels: list[str]) -> int:
    """Pixels under a heatmap for its column names, rotated 40 degrees."""
    return min(170, 16 + round(4 * max((len(s) for s in labels), default=4)))


def heatmap_options(x_labels: list[str], y_labels: list[str], cells: list[tuple[int, int, float]],
                    vmax: float, x_name: str, y_name: str, marked: set[tuple[int, int]] = frozenset(),
                    title: str | None = None, digits: int = 2) -> dict[str, Any]:
    """ECharts options of a heatmap: `cells` (row, column, value); a missing cell stays blank;
    `marked` cells are outlined. The axes' names go under the title ("rows: y_name · columns: x_name")."""
    data = []
    for i, j, value in cells:
        item: dict[str, Any] = {"value": [j, i, round(float(value), 4)]}
        if (i, j) in marked:
            item["itemStyle"] = {"borderColor": "#212121", "borderWidth": 2}
        data.append(item)
    bottom = bottom_margin(x_labels)
    tip = ("(p) => %s[p.value[1]] + ' → ' + %s[p.value[0]] + ': ' + p.value[2].toFixed(3)"
           % (json.dumps(y_labels), json.dumps(x_labels)))
    return {
        "animation": False,
        "title": {"text": title or "", "subtext": f"rows: {y_name} · columns: {x_name}", "left": "center",
                  "itemGap": 8, "textStyle": {"fontSize": 12, "fontWeight": "normal"}, "subtextStyle": {"fontSize": 10}},
        "tooltip": {"position": "top", ":formatter": tip},
        "grid": {"left": _left_margin(y_labels), "right": 70, "top": 56 if title else 30, "bottom": bottom},
        "xAxis": {"type": "category", "data": x_labels, "axisLabel": {"rotate": 40, "fontSize": 10, "interval": 0},
                  "splitArea": {"show": True}},
        "yAxis": {"type": "category", "data": y_labels, "inverse": True,
                  "axisLabel": {"fontSize": 10, "interval": 0}, "splitArea": {"show": True}},
        "visualMap": {"min": 0, "max": max(vmax, 1e-9), "calculable": False, "text": [f"{vmax:.2g}", "0"], "orient": "vertical", "right": 0,
                      "top": "middle", "itemHeight": 90, "itemWidth": 12, "textStyle": {"fontSize": 10},
                      "inRange": {"color": HEAT}},
        "series": [{"type": "heatmap", "data": data,
                    "label": {"show": True, "fontSize": 9, ":formatter": f"(p) => p.value[2].toFixed({digits})"}}],
    }


def transfer_options(name: str, concept: dict[str, Any]) -> dict[str, Any]:
    """The transfer matrix P_c as a heatmap (rows: fitted on A, columns: scored on B); None blank."""
    contexts = list(concept.get("contexts", []))
    cells = [(i, j, v) for i, row in enumerate(concept.get("P", [])) for j, v in enumerate(row) if v is not None]
    return heatmap_options(contexts, contexts, cells, 1.0, "scored on B", "fitted on A",
                           marked={(i, i) for i in range(len(contexts))}, title=f"P for {name}")


def slot_info_options(report: dict[str, Any]) -> dict[str, Any]:
    """Slots (rows) x concepts (columns), nats; the slot each concept is scored on outlined."""
    info = report.get("slot_info") or {}
    slots, concepts, values = list(info.get("slots", [])), list(info.get("concepts", [])), info.get("values", [])
    cells = [(i, j, v) for i, row in enumerate(values) for j, v in enumerate(row) if v is not None]
    scored = {(slots.index(c["slot"]), concepts.index(name)) for name, c in report.get("concepts", {}).items()
              if c.get("slot") in slots and name in concepts}
    return heatmap_options(concepts, slots, cells, max((v for *_, v in cells), default=1.0), "concept", "slot",
                           marked=scored)


def traversal_facts(report: dict[str, Any], slot: str) -> str | None:
    """'scored as thickness · ρ 0.93 · range 2.1 px · class kept 0.87' for a slot with a measured
    concept; 'scored as digit' for others scored; None for a slot nothing is scored on."""
    concept = slot_concepts(report).get(slot)
    if concept is None:
        return None
    facts = (report.get("traversal") or {}).get(concept)
    if not facts:
        return f"scored as {concept}"
    text = (f"scored as {concept} · ρ {num_se(facts.get('rho'), facts.get('rho_se'), 2)} · range "
            f"{num_se(facts.get('range'), facts.get('range_se'), 2)} {facts.get('unit', '')} · class kept "
            f"{num_se(facts.get('class_kept'), facts.get('class_kept_se'), 2)}")
    probe = facts.get("probe")
    if probe:  # the diagnosis: along the direction a probe reads the concept
        text += f" · along the probe's direction ρ {num(probe.get('rho'), 2)}, range {num(probe.get('range'), 2)}"
    return text


def attention_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    attention = report.get("attention")
    if not attention:
        return []
    top = attention.get("max_entropy")
    rows = [{"what": f"entropy {slot}", "value": f"{num(h)} / {num(top)} nats"}
            for slot, h in (attention.get("entropy") or {}).items()]
    rows.append({"what": "overlap", "value": num(attention.get("overlap"))})
    return rows


NOISE_SE = 2  # a difference within this many standard errors (of the two values together) is noise


def better(a: float | None, b: float | None, higher: bool = True, tolerance: float = 5e-4,
           noise: float | None = None) -> str:
    """'a' or 'b' (the better of two values), '=' when they are within `tolerance`, '≈' when they
    differ by no more than NOISE_SE times `noise` (the standard error of b - a), '' when one is
    missing."""
    if a is None or b is None:
        return ""
    if abs(a - b) <= tolerance:
        return "="
    if noise is not None and abs(a - b) <= NOISE_SE * noise:
        return "≈"
    return "a" if (a > b) == higher else "b"


def comparison_rows(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows {what, group, a, b, better, delta, noise} comparing two reports (either may be None):
    UFR, each concept's UFR, I, τ, L, traversal |ρ| and class kept, then MIG, DCI and attention
    overlap. `noise` is the standard error of the difference where both reports have one (the
    evaluation's own: probe seeds for UFR and its parts, seed images for the traversal); a
    difference within NOISE_SE of it is marked '≈', not better."""
    def concept(report, name, key):
        return ((report or {}).get("concepts", {}).get(name) or {}).get(key)

    def concept_se(report, name, key):
        return (concept(report, name, "se") or {}).get(key)

    def trav(report, name, key):
        value = ((report or {}).get("traversal", {}).get(name) or {}).get(key)
        return abs(value) if key == "rho" and value is not None else value

    def get(report, *path):
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    none = lambda r: None  # noqa: E731  (no standard error for this row)
    specs: list[tuple[str, str, Callable[[Any], Any], bool, Callable[[Any], Any]]] = [
        ("UFR", "overall", lambda r: get(r, "ufr"), True, lambda r: get(r, "ufr_se"))]
    names = list(dict.fromkeys([*((a or {}).get("concepts") or {}), *((b or {}).get("concepts") or {})]))
    for name in names:
        for key, label in (("ufr", "UFR"), ("I", "I"), ("tau", "τ"), ("L", "L")):
            specs.append((f"{name} {label}", name, lambda r, n=name, k=key: concept(r, n, k), True,
                          lambda r, n=name, k=key: concept_se(r, n, k)))
        if any(name in ((r or {}).get("traversal") or {}) for r in (a, b)):
            specs.append((f"{name} traversal |ρ|", name, lambda r, n=name: trav(r, n, "rho"), True,
                          lambda r, n=name: trav(r, n, "rho_se")))
            specs.append((f"{name} class kept", name, lambda r, n=name: trav(r, n, "class_kept"), True,
                          lambda r, n=name: trav(r, n, "class_kept_se")))
    specs += [("MIG", "literature", lambda r: get(r, "mig", "mig"), True, none),
              ("DCI disentanglement", "literature", lambda r: get(r, "dci", "disentanglement"), True, none),
              ("DCI completeness", "literature", lambda r: get(r, "dci", "completeness"), True, none),
              ("DCI informativeness", "literature", lambda r: get(r, "dci", "informativeness"), True, none),
              ("attention overlap", "attention", lambda r: get(r, "attention", "overlap"), False, none)]
    rows = []
    for what, group, value, higher, se in specs:
        x, y = (value(a) if a else None), (value(b) if b else None)
        sx, sy = (se(a) if a else None), (se(b) if b else None)
        noise = None if sx is None or sy is None else math.hypot(sx, sy)
        rows.append({"what": what, "group": group, "a": x, "b": y, "better": better(x, y, higher, noise=noise),
                     "delta": None if x is None or y is None else y - x, "higher": higher, "noise": noise})
    return rows


# ---- the figures, through the dashboard ------------------------------------------------------------
class FigureRoute:
    """`/_acc/figures/<checkpoint>/<kind>.png`: the trainer's figure, fetched with the page's link."""

    link: Link | None = None

    @classmethod
    def register(cls, link: Link) -> None:
        """Serve figures through `link` (the process's one link); the route is added once."""
        cls.link = link
        if any(getattr(r, "path", None) == FIGURE_PATH + "/{checkpoint}/{kind}.png" for r in app.routes):
            return

        @app.get(FIGURE_PATH + "/{checkpoint}/{kind}.png", include_in_schema=False)
        async def figure(checkpoint: str, kind: str, group: str | None = None, v: str | None = None) -> Response:
            if cls.link is None or kind not in FIGURE_KINDS or not SLOT.fullmatch(checkpoint) or (
                    group is not None and not SLOT.fullmatch(group)):
                return Response("no such figure", status_code=404, media_type="text/plain")
            try:
                png = await run.io_bound(cls.link.client.figure_png, checkpoint, kind, group)
            except TrainerError as e:
                status = e.status if 400 <= e.status < 500 else 502
                return Response(str(e.detail), status_code=status, media_type="text/plain",
                                headers={"Cache-Control": "no-store"})
            if png is None:  # shutting down
                return Response("shutting down", status_code=503, media_type="text/plain")
            # Always the newest report's figure, whatever `v` says: never kept under an older report's URL.
            return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def figure_image(url: str, role: str, alt: str) -> ui.element:
    """A figure as a plain <img>, at most the width it is given (the trainer draws them large enough)."""
    return ui.element("img").props(f'src="{url}" alt="{alt}" data-role="{role}"').style(
        "max-width: 100%; height: auto; display: block").mark(role)


def how_to_read(key: str) -> ui.label:
    return ui.label(HOW_TO_READ[key]).classes("acc-note").props(f'data-how="{key}"')


# ---- [Run Eval] ----------------------------------------------------------------------------------
class EvalRunner:
    """[Run Eval] for one checkpoint and its job's progress (from `factoring` events). `on_done`
    is awaited when an evaluation of this checkpoint finishes (from this page or any other)."""

    def __init__(self, link: Link, checkpoint_id: str, on_done: Callable[[], Awaitable[None]],
                 marker: str = "run-eval") -> None:
        self.link, self.checkpoint_id, self.on_done = link, checkpoint_id, on_done
        self.running = False
        with ui.row().classes("items-center acc-gap-sm no-wrap").props(f'data-role="{marker}-box"'):
            self.button = ui.button("Run Eval", icon="analytics", on_click=self.run).props(
                f'dense no-caps data-role="{marker}"').mark(marker)
            self.button.tooltip("evaluate how this checkpoint factors the held-out data (a background job)")
            self.progress = ui.linear_progress(0, show_value=False).style("width: 8rem").props(
                f'data-role="{marker}-progress"').mark(f"{marker}-progress")
            self.stage = ui.label("").classes("acc-note").props(f'data-role="{marker}-stage"').mark(f"{marker}-stage")
        self.progress.set_visibility(False)

    def has_report(self, has: bool) -> None:
        self.button.set_text("Re-run Eval" if has else "Run Eval")

    async def run(self) -> None:
        self.show({"checkpoint": self.checkpoint_id, "status": "queued", "progress": 0.0, "stage": "starting"})
        job = await act("starting the evaluation", self.link.client.start_factoring, self.checkpoint_id)
        if job is FAILED:
            self._idle("")

    def show_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """A factoring job of this checkpoint already running when the page opens."""
        for job in jobs:
            if job["kind"] == "factoring" and job.get("checkpoint") == self.checkpoint_id and job["status"] in RUNNING:
                self.show({"checkpoint": self.checkpoint_id, "status": job["status"], "progress": job["progress"],
                           "stage": job["status"]})

    async def event(self, data: dict[str, Any]) -> None:
        """A `factoring` event (any checkpoint's)."""
        if data.get("checkpoint") != self.checkpoint_id:
            return
        self.show(data)
        if data["status"] == "done":
            await self.on_done()
        elif data["status"] == "failed":
            ui.notify(f"the evaluation failed: {data.get('error')}", type="negative", multi_line=True,
                      close_button=True)

    def show(self, data: dict[str, Any]) -> None:
        status = data["status"]
        if status in RUNNING:
            self.running = True
            self.button.set_enabled(False)
            self.progress.set_visibility(True)
            self.progress.set_value(float(data.get("progress") or 0.0))
            self.stage.set_text(f"{data.get('stage') or status} · {100 * float(data.get('progress') or 0):.0f}%")
        elif status == "failed":
            self._idle(f"failed: {data.get('error')}")
        elif status == "cancelled":
            self._idle("cancelled")
        else:
            self._idle("")

    def _idle(self, text: str) -> None:
        self.running = False
        self.button.set_enabled(True)
        self.progress.set_visibility(False)
        self.stage.set_text(text)
