"""The model panel of the training page and its [Expand Model] dialog (M6), and the charts' markers
of where the model grew.

The panel shows the live model's name and parameter count. The dialog, fetched anew each time it
opens (`GET /api/model/layers`), lists the model's layers (name, type, shape, parameters),
the places it can grow (what would be inserted, the shape it maps to itself, the parameters it
adds), the initialisation to use, and the parameter count before and after, which follows the
chosen place. [Expand] sends `POST /api/model/expand` off the event loop; the trainer saves the
expanded model as a new node of the tree and continues in a new run, which the page then reloads.
What the trainer refuses (409 while a recipe drives it, 422 for a place it does not know) is
shown in the dialog, which stays open; a model with nowhere to grow says so and offers no [Expand].

`expansion_markers` finds the expansions along a run's lineage (its runs' `config.expansion` and
the checkpoints it descends from), for the charts to mark (`ChartGrid.set_markers`).
"""

from __future__ import annotations

from typing import Any

from nicegui import run, ui

from acc.ui.actions import fetch
from acc.ui.client import TrainerError
from acc.ui.link import Link
from acc.ui.tree import autosave_label, autosave_note

INITS = {  # what each initialisation means for the training, as the dialog says it
    "identity": "the expanded model computes exactly what this one did; nothing drops",
    "random": "PyTorch's default init: the loss jumps, then recovers",
}
LAYER_COLUMNS = [{"name": "name", "label": "layer", "field": "name", "align": "left"},
                 {"name": "type", "label": "type", "field": "type", "align": "left"},
                 {"name": "shape", "label": "shape", "field": "shape", "align": "left"},
                 {"name": "params", "label": "params", "field": "params", "align": "right"}]
NO_POINTS = "This model has no places to grow: {name} does not offer any."


def shape_text(shape: list[int] | None) -> str:
    """`[16, 7, 7]` -> `16×7×7`; no shape (a container) -> `—`."""
    return "×".join(map(str, shape)) if shape else "—"


def params_change(before: int, added: int | None) -> str:
    """`parameters: 28,073 → 30,185 (+2,112)`, or just the count when no place is chosen."""
    if added is None:
        return f"parameters: {before:,}"
    return f"parameters: {before:,} → {before + added:,} (+{added:,})"


def point_label(point: dict[str, Any]) -> str:
    """A place to grow, as its choice reads: where, what goes there, its shape, what it adds."""
    return f"{point['where']} · {point['kind']} · {shape_text(point['shape'])} · +{point['params']:,} params"


def marker_label(expansion: dict[str, Any]) -> str:
    """`+slots:1 (identity)`: a chart marker's text."""
    return f"+{expansion.get('where', '?')} ({expansion.get('init', '?')})"


def refusal(error: TrainerError) -> str:
    """The trainer's reason, readable: a 422 of request validation is a list of {loc, msg}."""
    detail = error.detail
    if isinstance(detail, list):
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return f"the trainer refused ({error.status}): {detail}" if error.status else str(detail)


def expansion_markers(runs: list[dict[str, Any]], checkpoints: list[dict[str, Any]],
                      run_id: int | None) -> list[dict[str, Any]]:
    """`[{"step", "label"}]`, oldest first: the expansions the curves of run `run_id` pass through.
    Its lineage is the run, the run it continues after a crash (`continues`), and the checkpoints
    back from the one it started from (`from_checkpoint`, then parents), as the metrics' lineage
    is; an expansion is in its run's config and on its checkpoint, so either finds it (the
    checkpoint may have been deleted, an old run may have no config for it)."""
    by_run = {r["id"]: r for r in runs}
    nodes = {c["id"]: c for c in checkpoints}
    found: dict[tuple[int, str], dict[str, Any]] = {}

    def add(expansion: dict[str, Any] | None, step: int | None = None) -> None:
        step = expansion.get("step", step) if expansion else None
        if step is not None:
            found[(step, marker_label(expansion))] = {"step": step, "label": marker_label(expansion)}

    seen_runs: set[int] = set()
    current = by_run.get(run_id)
    while current is not None and current["id"] not in seen_runs:  # never loop on bad data
        seen_runs.add(current["id"])
        config = current.get("config") or {}
        add(config.get("expansion"))
        node, seen = config.get("from_checkpoint"), set()
        while node in nodes and node not in seen:
            seen.add(node)
            add(nodes[node].get("expansion"), nodes[node]["step"])
            node = nodes[node]["parent"]
        continued = config.get("continues") or {}
        current = by_run.get(continued.get("run_id"))
    return sorted(found.values(), key=lambda m: m["step"])


class ExpandDialog:
    """[Expand Model]: choose where to grow and how to initialise, see the parameter count change."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.info: dict[str, Any] | None = None  # GET /api/model/layers, as of the last open
        with ui.dialog() as self.dialog, ui.card().style("width: 48rem; max-width: 100%"):
            ui.label("Expand the model").classes("acc-title")
            self.about = ui.label().classes("acc-note").props('data-role="expand-model"')
            ui.label("Layers").classes("text-body2 text-grey-7")
            with ui.element("div").classes("full-width").style("max-height: 15rem; overflow-y: auto"):
                self.layers = ui.table(columns=LAYER_COLUMNS, rows=[], row_key="name", pagination=0)
                self.layers.props('dense flat hide-bottom data-role="expand-layers"').classes("full-width")
                self.layers.mark("expand-layers")
            ui.label("Where to grow").classes("text-body2 text-grey-7")
            self.where = ui.radio({}, on_change=self._show_choice).props('data-role="expand-where"')
            self.where.mark("expand-where")
            self.no_points = ui.label().classes("text-body2 text-grey-8").props('data-role="expand-none"')
            ui.label("Initialisation of the new layer").classes("text-body2 text-grey-7")
            self.init = ui.radio({}, on_change=self._show_choice).props('data-role="expand-init"')
            self.init.mark("expand-init")
            self.count = ui.label().classes("text-body1 acc-num text-weight-medium").props(
                'data-role="expand-params"').mark("expand-params")
            ui.label("The expanded model is saved as a new node under the current one, and training goes on "
                     "from it in a new run.").classes("acc-note")
            self.autosave = autosave_label(None)
            self.error = ui.label().classes("text-negative text-body2 acc-pre").props('data-role="expand-error"')
            self.error.mark("expand-error")
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=self.dialog.close).props('flat data-role="cancel-expand"').mark(
                    "cancel-expand")
                self.confirm = ui.button("Expand", icon="add_box", on_click=self._submit).props(
                    'data-role="confirm-expand"').mark("confirm-expand")
        self._show(None)

    async def open(self) -> None:
        self._show(None)  # never the previous model's places while the new ones load
        self.about.set_text("reading the model…")
        self.dialog.open()
        info = await fetch(self.link.client.model_layers)  # as it is now: an expansion changed it
        if info is None:
            self._say("could not read the model's layers from the trainer")
            return
        self._show(info)

    def _show(self, info: dict[str, Any] | None) -> None:
        self.info = info
        self._say("")
        points = (info or {}).get("points", [])
        if info is not None:
            model = info.get("model", {})
            self.about.set_text(f"{model.get('name', 'model')} · {info['params']:,} parameters · "
                                f"{len(info.get('layers', []))} layers")
        self.layers.rows = [{**layer, "shape": shape_text(layer.get("shape")), "params": f"{layer['params']:,}"}
                            for layer in (info or {}).get("layers", [])]
        self.layers.update()
        chosen = self.where.value if any(p["where"] == self.where.value for p in points) else None
        self.where.set_options({p["where"]: point_label(p) for p in points},
                               value=chosen or (points[0]["where"] if points else None))
        none = info is not None and not points
        self.no_points.set_text(NO_POINTS.format(name=(info or {}).get("model", {}).get("name", "the model"))
                                if none else "")
        self.no_points.set_visibility(none)
        self._show_choice()

    def _point(self) -> dict[str, Any] | None:
        return next((p for p in (self.info or {}).get("points", []) if p["where"] == self.where.value), None)

    def _show_choice(self) -> None:
        """The inits the chosen place takes, the parameter count after, the autosave it makes first."""
        point = self._point()
        inits = list(point.get("inits", INITS)) if point else []
        if list(self.init.options) != inits:
            self.init.set_options({i: f"{i} — {INITS[i]}" if i in INITS else i for i in inits},
                                  value=self.init.value if self.init.value in inits else next(iter(inits), None))
        self.count.set_text(params_change(self.info["params"], point["params"] if point else None)
                            if self.info else "")
        note = autosave_note(self.link.state, f"expand at {point['where']}") if point else None
        self.autosave.set_text(note or "")
        self.autosave.set_visibility(bool(note))
        self.confirm.set_enabled(point is not None and self.init.value is not None)

    def _say(self, error: str) -> None:
        self.error.set_text(error)
        self.error.set_visibility(bool(error))

    async def _submit(self) -> None:
        point, init = self._point(), self.init.value
        if point is None or init is None:
            return
        self._say("")
        self.confirm.set_enabled(False)  # one expansion per click: it takes a moment
        try:
            result = await run.io_bound(self.link.client.expand_model, point["where"], init)
        except TrainerError as e:  # shown here, where the choice was made; the dialog stays
            self._say(refusal(e))
            self.confirm.set_enabled(True)
            return
        if result is None:  # NiceGUI is shutting down
            return
        checkpoint, autosaved = result["checkpoint"], result.get("autosaved")
        expansion = checkpoint.get("expansion") or {}
        message = (f"model grown at {point['where']} ({init}): {expansion.get('params_before', 0):,} → "
                   f"{expansion.get('params_after', 0):,} parameters; saved as checkpoint {checkpoint['name']!r}")
        if autosaved:
            message += f"; the live training was first saved as {autosaved['name']!r}"
        ui.notify(message, type="positive", multi_line=True, close_button=True)
        self.confirm.set_enabled(True)
        self.dialog.close()


class ModelPanel:
    """The live model in one line, with [Expand Model]."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.dialog = ExpandDialog(link)
        with ui.row().classes("full-width items-center no-wrap"):
            ui.label("Model").classes("acc-title")
            self.summary = ui.label().classes("acc-note").props('data-role="model-summary"').mark("model-summary")
            ui.space()
            ui.button("Expand Model", icon="add_box", on_click=self.dialog.open).props(
                'flat dense no-caps data-role="open-expand"').mark("open-expand").tooltip(
                "grow the live model by a layer, keeping what it has learnt")

    async def load(self) -> None:
        info = await fetch(self.link.client.model_layers)
        if info is not None:
            self.summary.set_text(f"{info.get('model', {}).get('name', '')} · {info['params']:,} parameters")
