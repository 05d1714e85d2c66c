"""The checkpoint tree panel (M1.95).

The tree is drawn as a tree: each checkpoint under its parent, so forks from one parent show as
sibling branches, each node with its step and key metrics, and the one the trainer continues from
marked. Select a node to load it, fork a new branch from it, or run its factoring evaluation (M5):
[Run Eval] starts the job, the node shows its progress from the `factoring` events, then its UFR,
and every node links to its evaluation page. Tick two and [Compare] opens the comparison page
(`/compare?a=&b=`): their factoring side by side, their differences (tasks, loss weights, steps,
metrics) and their curves overlaid from the root of the tree, parting where they were forked (the
helpers for those are here).
"""

from __future__ import annotations

from typing import Any

from nicegui import ui

from acc.ui.actions import FAILED, act, fetch
from acc.ui.factoring import RUNNING, compare_url, eval_url, numerics_text
from acc.ui.link import Link

KEY_METRICS = 2  # metrics shown on a node's line
COMPARE_CHARTS = 8  # curves in the compare dialog, the keys both checkpoints have first
COMPARE_POINTS = 500  # per curve
COMPARE_SMOOTHING = 0.6  # as the main charts' default
COLORS = ("#1976d2", "#ef6c00")  # checkpoint a, checkpoint b


def key_metrics(metrics: dict[str, float | None]) -> str:
    """The node's headline: evaluation metrics first (they are comparable), then losses."""
    ranked = sorted((k for k, v in metrics.items() if v is not None), key=lambda k: (not k.startswith("eval/"), k))
    return "  ".join(f"{k.removeprefix('eval/')}={metrics[k]:.4g}" for k in ranked[:KEY_METRICS])


def grown_caption(expansion: dict[str, Any] | None) -> str:
    """What an expansion node's caption says of it: `grown at slots:1 (identity) 28,073 → 30,185 params`."""
    if not expansion:
        return ""
    counts = (f" {expansion['params_before']:,} → {expansion['params_after']:,} params"
              if {"params_before", "params_after"} <= set(expansion) else "")
    return f"grown at {expansion.get('where', '?')} ({expansion.get('init', '?')}){counts}"


def eval_fields(state: dict[str, Any] | None) -> dict[str, Any]:
    """What a node shows of its factoring evaluation: `ufr` (text, or None before the first
    report), `running` with `progress` and `stage`, `failed` with the error."""
    state = state or {}
    ufr = state.get("ufr")
    running = state.get("status") in RUNNING
    return {"ufr": None if ufr is None else f"{ufr:.2f}", "running": running,
            "progress": float(state.get("progress") or 0.0) if running else None,
            "stage": f"{state.get('stage') or 'queued'} · {100 * float(state.get('progress') or 0):.0f}%" if running else "",
            "failed": state.get("status") == "failed", "error": state.get("error") or ""}


def tree_nodes(rows: list[dict[str, Any]], current: str | None = None,
               evals: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Quasar tree nodes from checkpoint rows: children under their parent, oldest first;
    `current` is the checkpoint the trainer continues from (the last saved or loaded); `evals`
    the factoring state of each checkpoint (see `eval_fields`)."""
    evals = evals or {}
    nodes = {row["id"]: {"id": row["id"], "label": f"{row['name']} · step {row['step']:,}",
                         "caption": " · ".join(filter(None, [row.get("branch") or "",
                                                             grown_caption(row.get("expansion")),
                                                             key_metrics(row["metrics"])])),
                         "current": row["id"] == current, "eval_url": eval_url(row["id"]),
                         **eval_fields(evals.get(row["id"])), "children": []} for row in rows}
    roots = []
    for row in rows:
        parent = nodes.get(row["parent"])
        (parent["children"] if parent else roots).append(nodes[row["id"]])
    return roots


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, str]]:
    """Rows `{field, a, b, same}` comparing two checkpoints: identity, numerics, tasks, weights, metrics."""
    def task_line(task: dict[str, Any]) -> str:
        state = "" if task.get("enabled", True) else " (disabled)"
        return f"{task['type']} on {task['latent']}/{task['dataset']}, weight {task['weight']:g}{state}"

    rows = [("step", a["step"], b["step"]), ("branch", a.get("branch"), b.get("branch")),
            ("model", a.get("model", {}).get("name"), b.get("model", {}).get("name")),
            # one seed under other numerics is another draw (README, "Same seed, same result?")
            ("trained under", numerics_text(a.get("trained_under") or []) or None,
             numerics_text(b.get("trained_under") or []) or None)]
    tasks_a = {t["name"]: task_line(t) for t in a.get("tasks", [])}
    tasks_b = {t["name"]: task_line(t) for t in b.get("tasks", [])}
    rows += [(f"task {name}", tasks_a.get(name, "—"), tasks_b.get(name, "—")) for name in sorted(tasks_a | tasks_b)]
    metrics = sorted(set(a["metrics"]) | set(b["metrics"]))
    rows += [(key, a["metrics"].get(key), b["metrics"].get(key)) for key in metrics]

    def show(value: Any) -> str:
        return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    return [{"field": field, "a": show(x), "b": show(y), "same": "" if x == y else "≠"} for field, x, y in rows]


def deletion_refused(row: dict[str, Any] | None, rows: list[dict[str, Any]], current: str | None) -> str | None:
    """Why the trainer would refuse to delete `row` (as it does), or None: it must be a leaf that
    the trainer does not continue from."""
    if row is None:
        return "select a node"
    if any(other["parent"] == row["id"] for other in rows):
        return "has children: delete those first"
    if row["id"] == current:
        return "the trainer continues from here"
    return None


def autosave_note(state: dict[str, Any] | None, what: str) -> str | None:
    """What a confirmation says when the trainer will first save the live training as a checkpoint
    (`state["unsaved"]`, missing: False): "" when nothing unsaved is lost, None when the trainer
    does not say (an older trainer, which autosaves nothing either)."""
    if not state or "unsaved" not in state:
        return None
    if not state["unsaved"]:
        return ""
    return (f"The live training at step {state['step']:,} is not saved: it will first be saved as checkpoint "
            f"'autosave before {what}'.")


def fork_step(rows: dict[str, dict[str, Any]], a: str, b: str) -> int | None:
    """The step of the nearest checkpoint that `a` and `b` both descend from (or are), else None."""
    def chain(node: str | None) -> list[str]:
        out: list[str] = []
        while node in rows and node not in out:
            out.append(node)
            node = rows[node]["parent"]
        return out
    ancestors_of_a = set(chain(a))
    common = next((node for node in chain(b) if node in ancestors_of_a), None)
    return rows[common]["step"] if common is not None else None


def compare_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The curves worth overlaying: evaluation, then losses; those both have first."""
    keys = {k for k in set(a) | set(b) if k.startswith(("eval/", "loss/"))}
    return sorted(keys, key=lambda k: (not (k in a and k in b), not k.startswith("eval/"), k))[:COMPARE_CHARTS]


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (the main charts do it in the browser)."""
    last, out = 0.0, []
    for i, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** i))
    return out


def compare_options(key: str, curves: list[tuple[str, dict[str, list] | None]], forked_at: int | None) -> dict[str, Any]:
    """ECharts options overlaying one key's curve for each (name, series or None where that
    checkpoint lacks the key): raw faint, smoothed solid, one color per checkpoint."""
    series: list[dict[str, Any]] = []
    for (name, points), color in zip(curves, COLORS):
        if points is None:
            continue
        raw = list(zip(points["step"], points["value"]))
        smoothed = list(zip(points["step"], smooth(points["value"], COMPARE_SMOOTHING)))
        line = {"type": "line", "showSymbol": False, "color": color, "animation": False}
        series += [{**line, "data": raw, "lineStyle": {"opacity": 0.25}, "silent": True},
                   {**line, "name": name, "data": smoothed}]
    if forked_at is not None and series:
        series[-1]["markLine"] = {"silent": True, "symbol": "none", "lineStyle": {"color": "#9e9e9e", "type": "dashed"},
                                  "label": {"formatter": "fork", "position": "insideEndTop"},
                                  "data": [{"xAxis": forked_at}]}
    return {"title": {"text": key, "left": "center", "textStyle": {"fontSize": 12, "fontWeight": "normal"}},
            "legend": {"bottom": 0, "textStyle": {"fontSize": 11}},
            "grid": {"left": 48, "right": 16, "top": 28, "bottom": 40},
            "xAxis": {"type": "value", "min": "dataMin", "max": "dataMax"},
            "yAxis": {"type": "value", "scale": True}, "tooltip": {"trigger": "axis"}, "series": series}


def autosave_label(note: str | None) -> ui.label:
    """The autosave line of a confirmation (see `autosave_note`), shown when there is one."""
    label = ui.label(note or "").classes("text-body2 text-deep-orange-9 text-weight-medium").props(
        'data-role="autosave-note"').mark("autosave-note")
    label.set_visibility(bool(note))
    return label


def loaded_message(what: str, result: dict[str, Any]) -> str:
    """The notification after a load or a fork, naming the autosave made first, if any."""
    autosaved = result.get("autosaved") if isinstance(result, dict) else None
    return what + (f"; the live training was first saved as {autosaved['name']!r}" if autosaved else "")


NODE_HEADER = """
    <div class="column" :data-node="props.node.id">
      <span class="text-body2">{{ props.node.label }}
        <q-badge v-if="props.node.current" color="teal" label="current" data-role="current"
                 title="the trainer continues from here" />
        <q-badge v-if="props.node.ufr != null" color="indigo" :label="'UFR ' + props.node.ufr" data-role="ufr"
                 title="the factoring score of its newest evaluation (0..1, higher is better)" />
        <q-badge v-if="props.node.failed" color="negative" label="eval failed" data-role="eval-failed"
                 :title="props.node.error" />
        <a :href="props.node.eval_url" data-role="eval-link" class="acc-note q-ml-xs" @click.stop
           title="its evaluation page">eval ›</a>
      </span>
      <span class="acc-note">{{ props.node.caption }}</span>
      <div v-if="props.node.running" class="row items-center no-wrap acc-gap-sm" data-role="eval-progress">
        <q-linear-progress :value="props.node.progress" style="width: 6rem" />
        <span class="acc-note">{{ props.node.stage }}</span>
      </div>
    </div>"""


class CheckpointTree:
    """The workspace's checkpoints as a tree, with save, load, fork, delete, evaluate and compare."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.rows: dict[str, dict[str, Any]] = {}
        self.evals: dict[str, dict[str, Any]] = {}  # checkpoint id -> {"ufr", "status", "progress", "stage", "error"}
        with ui.row().classes("full-width items-center"):
            ui.label("Checkpoints").classes("acc-title")
            ui.space()
            self.name = ui.input(placeholder="name (optional)").props("dense").style("width: 9rem")
            ui.button(icon="save", on_click=self.save).props("flat dense round").tooltip("save a checkpoint now")
        self.tree = ui.tree([], node_key="id", label_key="label", tick_strategy="strict",
                            on_select=lambda e: self._show_selection(), on_tick=lambda e: self._show_selection())
        self.tree.props('data-role="checkpoint-tree" dense no-transition').mark("checkpoint-tree")
        self.tree.add_slot("default-header", NODE_HEADER)
        self.current: str | None = None
        with ui.row().classes("full-width items-center acc-gap-sm"):
            self.selected = ui.label("select a node · tick two to compare").classes("acc-note")
            self.eval_link = ui.link("evaluation ›", "#").classes("acc-note").props('data-role="selected-eval-link"')
            self.eval_link.mark("selected-eval-link")
            ui.space()
            self.run_eval_button = ui.button("Run Eval", icon="analytics", on_click=self.run_eval).props(
                'flat dense data-role="tree-run-eval"').mark("tree-run-eval")
            self.run_eval_button.tooltip("evaluate how the selected checkpoint factors the held-out data")
            self.load_button = ui.button("Load", icon="restore", on_click=self.load).props("flat dense").mark(
                "load-checkpoint")
            self.fork_button = ui.button("Fork", icon="call_split", on_click=self.fork).props("flat dense").mark(
                "fork-checkpoint")
            # An icon button with a hover text that says what it does or why it is off. The text is
            # its own tooltip element: `button.tooltip()` returns the button, whose `set_text` would
            # set its label. The tooltip sits on a wrapper, as a disabled button gets no hover.
            with ui.element("span").props('data-role="delete-checkpoint-wrap"'):
                self.delete_button = ui.button(icon="delete", on_click=self.delete).props(
                    'flat dense round data-role="delete-checkpoint"').mark("delete-checkpoint")
                self.delete_tip = ui.tooltip("").mark("delete-checkpoint-tip")
            self.compare_button = ui.button("Compare", icon="compare_arrows", on_click=self.compare).props(
                "flat dense").mark("compare")
        self._show_selection()

    async def refresh(self) -> None:
        rows = await fetch(self.link.client.checkpoints)
        if rows is None:
            return
        self.rows = {row["id"]: row for row in rows}
        for row in rows:  # the listing carries each node's newest UFR
            if row.get("ufr") is not None:
                self.evals.setdefault(row["id"], {})["ufr"] = row["ufr"]
        self._draw()

    async def load_all(self) -> None:
        """The checkpoints, their UFRs and the factoring jobs running now (a page opening)."""
        await self.refresh()
        jobs = await fetch(self.link.client.jobs)
        if jobs is not None:
            self.show_jobs(jobs)

    def show_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Factoring jobs running as the page opens (a job carries its checkpoint's id; events follow)."""
        for job in jobs:
            if job["kind"] == "factoring" and job["status"] in RUNNING and job.get("checkpoint") in self.rows:
                self.evals.setdefault(job["checkpoint"], {}).update(
                    status=job["status"], progress=job["progress"], stage=job["status"])
        self._draw()

    async def show_factoring(self, data: dict[str, Any]) -> None:
        """A `factoring` event: the node's progress; when done, its new UFR."""
        checkpoint_id = data.get("checkpoint")
        if checkpoint_id is None:
            return
        state = self.evals.setdefault(checkpoint_id, {})
        state.update(status=data["status"], progress=data.get("progress"), stage=data.get("stage"),
                     error=data.get("error"))
        if data["status"] == "done":
            report = await fetch(self.link.client.factoring_or_none, checkpoint_id)
            if report is not None:
                state["ufr"] = report.get("ufr")
        self._draw()

    async def run_eval(self) -> None:
        row = self._chosen()
        if row is None:
            return
        self.evals.setdefault(row["id"], {}).update(status="queued", progress=0.0, stage="starting", error=None)
        self._draw()
        job = await act(f"evaluating {row['name']}", self.link.client.start_factoring, row["id"])
        if job is FAILED:
            self.evals[row["id"]]["status"] = None
            self._draw()

    def show_current(self, checkpoint: str | None) -> None:
        """Mark the checkpoint the trainer continues from (from the state)."""
        if checkpoint != self.current:
            self.current = checkpoint
            self._draw()

    def _draw(self) -> None:
        self.tree.props["nodes"] = tree_nodes(list(self.rows.values()), self.current, self.evals)
        self.tree.update()
        self.tree.expand()
        self._show_selection()

    def _chosen(self) -> dict[str, Any] | None:
        return self.rows.get(self.tree.props.get("selected"))

    def _ticked(self) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.tree.props.get("ticked", []) if i in self.rows]

    def _show_selection(self) -> None:
        chosen, ticked = self._chosen(), self._ticked()
        self.selected.set_text(f"selected: {chosen['name']}" if chosen else "select a node · tick two to compare")
        self.load_button.set_enabled(chosen is not None)
        self.fork_button.set_enabled(chosen is not None)
        why_not = deletion_refused(chosen, list(self.rows.values()), self.current)
        self.delete_button.set_enabled(chosen is not None and why_not is None)
        self.delete_tip.set_text(why_not or "delete this checkpoint (a leaf of the tree)")
        self.compare_button.set_enabled(len(ticked) == 2)
        running = chosen is not None and self.evals.get(chosen["id"], {}).get("status") in RUNNING
        self.run_eval_button.set_enabled(chosen is not None and not running)
        self.eval_link.set_visibility(chosen is not None)
        if chosen is not None and self.eval_link.props.get("href") != eval_url(chosen["id"]):
            self.eval_link.props["href"] = eval_url(chosen["id"])
            self.eval_link.update()

    async def save(self) -> None:
        saved = await act("saving a checkpoint", self.link.client.save_checkpoint, self.name.value.strip() or None)
        if saved is not FAILED:
            ui.notify(f"checkpoint {saved['name']!r} saved at step {saved['step']:,}", type="positive")
            self.name.set_value("")
            await self.refresh()

    async def load(self) -> None:
        row = self._chosen()
        if row is None:
            return
        note = autosave_note(self.link.state, f"load {row['name']}")
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Load checkpoint {row['name']!r} (step {row['step']:,})? The live model, tasks and "
                     "optimizer are replaced" + ("; save first to keep them." if note is None else "."))
            autosave_label(note)
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat").mark("cancel-load")
                ui.button("Load", on_click=lambda: dialog.submit(True)).mark("confirm-load")
        confirmed = await dialog
        dialog.delete()
        if confirmed:
            result = await act(f"loading {row['name']}", self.link.client.load_checkpoint, row["id"])
            if result is not FAILED:
                ui.notify(loaded_message(f"checkpoint {row['name']!r} loaded", result), type="positive")

    async def delete(self) -> None:
        row = self._chosen()
        if row is None:
            return
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Delete checkpoint {row['name']!r} (step {row['step']:,})? Its weights are removed from disk.")
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat")
                ui.button("Delete", on_click=lambda: dialog.submit(True)).props("color=negative").mark(
                    "confirm-delete-checkpoint")
        confirmed = await dialog
        dialog.delete()
        if confirmed and await act(f"deleting {row['name']}", self.link.client.delete_checkpoint,
                                   row["id"]) is not FAILED:
            ui.notify(f"checkpoint {row['name']!r} deleted", type="positive")
            await self.refresh()

    async def fork(self) -> None:
        row = self._chosen()
        if row is None:
            return
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Fork a new branch from {row['name']!r} (step {row['step']:,}): training continues from its "
                     "weights, tasks and optimizer; checkpoints you save become its children.")
            note = autosave_label(None)
            branch = ui.input("branch name", value=f"{row['name']}-fork").props('data-role="fork-name"')
            branch.mark("fork-name")

            def show_note() -> None:  # the autosave is named after the branch too
                text = autosave_note(self.link.state, f"fork {row['name']} as {(branch.value or '').strip()}")
                note.set_text(text or "")
                note.set_visibility(bool(text))
            branch.on_value_change(show_note)
            show_note()
            with ui.row().classes("full-width justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat").mark("cancel-fork")
                ui.button("Fork", on_click=lambda: dialog.submit(branch.value.strip())).mark("confirm-fork")
        name = await dialog
        dialog.delete()
        if name:
            result = await act(f"forking {row['name']}", self.link.client.fork_checkpoint, row["id"], name)
            if result is not FAILED:
                ui.notify(loaded_message(f"branch {name!r} started from {row['name']!r}", result), type="positive")

    def compare(self) -> None:
        """The comparison page of the two ticked checkpoints, the older as `a`."""
        ticked = sorted(self._ticked(), key=lambda r: r["created"])
        if len(ticked) == 2:
            ui.navigate.to(compare_url(ticked[0]["id"], ticked[1]["id"]))
