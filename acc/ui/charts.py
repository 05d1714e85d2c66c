"""Live metric curves: one uPlot chart per metric key, raw points faint, smoothed curve solid.

The points never sit in NiceGUI's element props (Vue would watch every one of them, and any
change would re-send the whole chart): they go to the browser's `accCharts` (`CHARTS_JS`), which
keeps them beside each uPlot instance. A chart's history, downsampled by the server (min/max/
last per bucket, so spikes stay), goes with `set` (a page's first one is fetched by the browser
over plain HTTP while the page still loads: `FirstHistory`); after that only new points cross the
websocket: the points of one flush, thinned to their min, max and last per key, go to every chart
in ONE `append`, which the browser answers once it has taken them, so a slow tab gets bigger
batches rather than a growing backlog. Smoothing and the log scale are applied in the browser:
moving the slider redraws at once and sends nothing. A live series that grows past `RELOAD_AT`
points is fetched again, downsampled. Every chart marks the steps where the model was expanded
(`set_markers`): a dashed vertical line with a small label, drawn by a uPlot draw hook.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from fastapi import Response
from nicegui import Client, app, background_tasks, run, ui

log = logging.getLogger(__name__)

MAX_POINTS = 2000  # per series, asked of the server on load
RELOAD_AT = 2 * MAX_POINTS
BROWSER_WAIT_S = 5.0
SMOOTHING = 0.6  # TensorBoard's default
STATIC = Path(__file__).parent / "static"  # vendored uPlot (see static/uplot/README.md)
STATIC_URL = "/_acc/static/1"  # the number changes with what is in it, so browsers fetch it anew

# The browser half. Each chart's raw points live in a plain array on its DOM node, beside its uPlot
# instance; the smoothed curve is derived from them exactly as TensorBoard does (`ema`). Points
# for a chart that has not mounted yet wait. Only charts on screen redraw, the others when
# scrolled into view. Drag to zoom into steps (live points then keep that view), double-click to
# see everything again. `summary()` tells tests and the benchmark what each chart holds and has
# drawn.
# Evaluation series (`eval/...`) are drawn raw, as points joined by a line, never smoothed: they
# are a few measurements, each already an average over the validation set, and an EMA over a
# handful of sparse points lags and bends the line away from the values actually measured. A
# chart whose points all sit at one step (a first evaluation) gets an x range around that step,
# where uPlot would span 0 to twice the step. Markers (`setMarkers`) are the page's, shared by all
# charts (a chart made later draws them too); each chart records the steps it drew them at.
CHARTS_JS = """
<link rel="stylesheet" href="%(static)s/uPlot.min.css">
<script defer src="%(static)s/uPlot.iife.min.js"></script>
<script>
window.accCharts = {
  smoothing: %(smoothing)s,
  log: false,
  markers: [],  // [{step, label}]: where the model grew, a dashed line on every chart
  pending: new Map(),
  onScreen: new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const s = entry.target.acc;
      if (!s) continue;
      s.visible = entry.isIntersecting;
      if (s.visible && s.stale) accCharts.draw(entry.target);
    }
  }),
  onResize: new ResizeObserver((entries) => {
    for (const entry of entries) entry.target.acc?.plot?.setSize(accCharts.size(entry.target));
  }),
  // Debiased exponential moving average: last = last*w + (1-w)*v; shown = last / (1 - w**i).
  ema(values, weight, state = {last: 0, count: 0}) {
    return values.map((v) => {
      if (!Number.isFinite(v)) return v;
      state.last = state.last * weight + (1 - weight) * v;
      state.count += 1;
      return state.last / (1 - weight ** state.count);
    });
  },
  smoothed(points, s) {
    const values = this.ema(points.map((p) => p[1]), this.smoothing, s.ema);
    return points.map((p, i) => [p[0], values[i]]);
  },
  resmooth(s) {
    s.ema = {last: 0, count: 0};
    s.smooth = this.smoothing && !s.rawOnly ? this.smoothed(s.raw, s) : [];
  },
  // A chart's whole series; `keepNewer` keeps the points it already has past the new ones' end
  // (a series fetched again while live points kept coming).
  set(batches, keepNewer = false) { this.queue(batches, {reset: true, keepNewer}); },
  // The page's first history, asked for while the scripts load (see `FirstHistory`).
  fetchFirst(url) { fetch(url).then((r) => r.ok ? r.json() : {}).then((b) => this.set(b)).catch(() => {}); },
  append(batches) { this.queue(batches, {reset: false}); },
  queue(batches, how) {
    for (const [id, points] of Object.entries(batches)) {
      if (!this.pending.has(id)) this.pending.set(id, {since: Date.now(), ops: []});
      this.pending.get(id).ops.push({...how, points});
    }
    this.drain();
  },
  adopt(node) {
    node.acc = {raw: [], smooth: [], ema: null, plot: null, rawOnly: node.dataset.key.startsWith("eval/")};
    this.onScreen.observe(node);
    this.onResize.observe(node);
  },
  drain() {
    for (const [id, entry] of this.pending) {
      const node = document.getElementById("c" + id);
      if (!node || !window.uPlot) {  // not mounted (or the library not loaded) yet, or gone for good
        if (Date.now() - entry.since > 30000) this.pending.delete(id);
        continue;
      }
      if (!node.acc) this.adopt(node);
      const s = node.acc;
      for (const {reset, keepNewer, points} of entry.ops) {
        if (reset) {
          const end = points.length ? points[points.length - 1][0] : -Infinity;
          s.raw = keepNewer ? points.concat(s.raw.filter((p) => p[0] > end)) : points;
          this.resmooth(s);
        } else {
          s.raw.push(...points);
          if (this.smoothing && !s.rawOnly) s.smooth.push(...this.smoothed(points, s));
        }
      }
      this.drawOrDefer(node);
      this.pending.delete(id);
    }
    if (this.pending.size && !this.retry) this.retry = setTimeout(() => { this.retry = null; this.drain(); }, 16);
  },
  size(node) {  // the plot's share of the node: the title and the legend take the rest
    return {width: Math.max(100, node.clientWidth), height: Math.max(60, node.clientHeight - 46)};
  },
  options(node) {
    const sparse = node.acc.rawOnly;  // a few points: show them, as measured
    const line = (label, stroke, width) => ({label, stroke, width, points: {show: sparse, size: 5}});
    const font = "11px Roboto, sans-serif";
    return {
      title: node.dataset.key, ...this.size(node),
      scales: {x: {time: false}, y: {distr: this.log ? 3 : 1, range: (u, min, max) => this.range(min, max)}},
      axes: [{font, size: 30},  // four significant digits: a learning rate of 0.0015 is not "0.002"
             {font, size: 56, space: 24, values: (u, ticks) => ticks.map((v) => v == null ? "" : String(+v.toPrecision(4)))}],
      cursor: {drag: {x: true, y: false}},
      hooks: {draw: [(u) => this.drawMarkers(u, node)]},
      series: sparse ? [{label: "step"}, line("value", "#1565c0", 2)]
                     : [{label: "step"},
                        line("raw", () => this.smoothing ? "rgba(100, 181, 246, 0.45)" : "#64b5f6", 1),
                        line("smoothed", "#1565c0", 2)],
    };
  },
  // The x range of a chart whose points are all at one step: around it, not from 0 to twice it.
  pointRange(step) {
    const pad = Math.max(5, Math.abs(step) * 0.1);
    return {min: step >= 0 ? Math.max(0, step - pad) : step - pad, max: step + pad};
  },
  range(min, max) {  // uPlot's own ranges, with room around a (nearly) constant series: a fixed lr
    if (min == null || max == null) return [0, 1];
    if (this.log) {
      const r = uPlot.rangeLog(min, max, 10, true);
      return r[0] < r[1] ? r : uPlot.rangeLog(min / 2, max * 2, 10, true);
    }
    if (max - min <= 1e-9 * Math.max(Math.abs(min), Math.abs(max))) {
      const pad = Math.abs(max) * 0.1 || 1;
      return [min - pad, max + pad];
    }
    return uPlot.rangeNum(min, max, 0.1, true);
  },
  draw(node) {
    const s = node.acc;
    s.stale = false;
    s.drawn = s.raw.length;
    const data = [s.raw.map((p) => p[0]), s.raw.map((p) => p[1])];
    if (!s.rawOnly)
      data.push(s.smooth.length === s.raw.length ? s.smooth.map((p) => p[1]) : s.raw.map(() => null));
    const steps = data[0], oneStep = steps.length > 0 && steps[0] === steps[steps.length - 1];
    if (!s.plot || s.log !== this.log) {  // the y scale's kind is fixed when a plot is made
      s.plot?.destroy();
      s.plot = new uPlot(this.options(node), data, node);
      s.log = this.log;
    } else {
      const u = s.plot, x = u.data[0];  // zoomed in: keep the view while live points come
      const zoomed = x.length > 1 && (u.scales.x.min > x[0] || u.scales.x.max < x[x.length - 1]);
      u.setData(data, !zoomed);
    }
    if (oneStep) s.plot.setScale("x", this.pointRange(steps[0]));
  },
  drawMarkers(u, node) {  // after uPlot drew the series: on its canvas, clipped to the plot area
    const {left, top, width, height} = u.bbox, px = uPlot.pxRatio || 1, ctx = u.ctx, drawn = [];
    ctx.save();
    ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
    ctx.strokeStyle = ctx.fillStyle = "#e65100";
    ctx.lineWidth = px; ctx.setLineDash([4 * px, 3 * px]);
    ctx.font = `${10 * px}px Roboto, sans-serif`; ctx.textBaseline = "top";
    this.markers.forEach((m, i) => {
      const x = Math.round(u.valToPos(m.step, "x", true));
      if (!(x >= left && x <= left + width)) return;  // outside the steps shown (zoomed, or not reached)
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      const w = ctx.measureText(m.label).width, y = top + (2 + 12 * (i %% 3)) * px;  // neighbours stagger
      ctx.fillText(m.label, x + 3 * px + w > left + width ? x - 3 * px - w : x + 3 * px, y);
      drawn.push(m.step);
    });
    ctx.restore();
    node.acc.markersDrawn = drawn;
  },
  setMarkers(markers) {
    this.markers = markers;
    for (const node of this.charts()) if (node.acc.plot) this.drawOrDefer(node);
  },
  drawOrDefer(node) {
    if (node.acc.visible === false) node.acc.stale = true;
    else this.draw(node);  // on screen, or not known yet (just mounted)
  },
  charts() {
    return [...document.querySelectorAll(".acc-chart")].filter((node) => node.acc);
  },
  restyle(style) {
    Object.assign(this, style);
    for (const node of this.charts()) {
      this.resmooth(node.acc);
      this.drawOrDefer(node);
    }
  },
  summary() {
    const out = {};
    for (const node of this.charts()) {
      const raw = node.acc.raw;
      out[node.dataset.key] = {points: raw.length, drawn: node.acc.drawn || 0,
                               firstStep: raw.length ? raw[0][0] : null,
                               lastStep: raw.length ? raw[raw.length - 1][0] : null,
                               smoothed: node.acc.smooth.length > 0,
                               markers: this.markers.map((m) => ({...m})), markersDrawn: node.acc.markersDrawn || []};
    }
    return out;
  },
};
</script>
""" % {"smoothing": SMOOTHING, "static": STATIC_URL + "/uplot"}

Points = list[tuple[int, float]]


def _round(value: float) -> float:
    """Six significant digits: indistinguishable on a chart, a third of the bytes."""
    return float(f"{value:.6g}") if math.isfinite(value) else value


def order(key: str) -> tuple:
    """Charts sort loss/total first, then the other losses, then evaluation, then the rest."""
    rank = 0 if key == "loss/total" else 1 if key.startswith("loss/") else 2 if key.startswith("eval/") else 3
    return rank, key


def section_of(key: str) -> str:
    return {0: "loss", 1: "loss", 2: "eval"}.get(order(key)[0], "other")


def thin(points: Points) -> Points:
    """The min, the max and the last of a run of points, in step order (spikes survive)."""
    if len(points) <= 3:
        return points
    finite = [p for p in points if math.isfinite(p[1])] or points
    keep = {min(finite, key=lambda p: p[1]), max(finite, key=lambda p: p[1]), points[-1]}
    return sorted(keep, key=lambda p: p[0])


class MetricChart:
    """The chart of one metric key; remembers how much it has been sent."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.count, self.last_step = 0, None
        self.element = ui.element("div").classes("acc-chart").props(f'data-key="{key}"')

    def took(self, points: Points) -> None:
        """Points appended."""
        self.count += len(points)
        self.last_step = points[-1][0] if points else self.last_step

    def reset(self, points: Points, keep_newer: bool) -> None:
        """The series sent whole (see `accCharts.set`)."""
        self.count = len(points)
        ends = [points[-1][0]] if points else []
        if keep_newer and self.last_step is not None:
            ends.append(self.last_step)
        self.last_step = max(ends, default=None)


class FirstHistory:
    """Hands a page its first history over plain HTTP, fetched by the browser while NiceGUI's
    scripts still load and parse, so that the points are there when the charts mount, instead
    of following the websocket's connection. The page's first `ChartGrid.load` hands them over with
    `give`; the page's head asks `/_acc/history/<token>`, which answers once they are there or after
    `WAIT_S` (empty: the history then goes over the websocket as for every later load), and a
    browser that never asks gets them over the websocket too."""

    WAIT_S = 1.0
    KEEP_S = 60.0  # a page whose browser never asks (a prefetch, a closed tab) is forgotten
    waiting: dict[str, tuple[float, asyncio.Future]] = {}

    def __init__(self) -> None:
        now = time.monotonic()
        for token in [t for t, (made, _) in self.waiting.items() if now - made > self.KEEP_S]:
            self.waiting.pop(token)[1].cancel()
        self.token = secrets.token_urlsafe(16)
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiting[self.token] = (now, self.future)
        ui.add_head_html(f'<script>accCharts.fetchFirst("/_acc/history/{self.token}")</script>')

    def give(self, batches_json: str, client: Client) -> bool:
        """Hand over the history (JSON of `accCharts.set`'s batches); False if it is too late."""
        if self.future.done():
            return False
        self.future.set_result(batches_json)
        background_tasks.create(self._unless_fetched(batches_json, client), name="acc-first-history")
        return True

    async def _unless_fetched(self, batches_json: str, client: Client) -> None:
        """A browser that never asked (its fetch failed) gets the history over the websocket."""
        try:
            await client.connected(timeout=self.KEEP_S)
        except Exception:  # gone before it connected
            self.waiting.pop(self.token, None)
            return
        if self.waiting.pop(self.token, None) is not None:
            client.run_javascript(f"accCharts.set({batches_json})")

    @classmethod
    def route(cls) -> None:
        """Register the endpoint in NiceGUI's app."""
        @app.get("/_acc/history/{token}", include_in_schema=False)
        async def first_history(token: str) -> Response:
            _, future = cls.waiting.pop(token, (None, None))
            if future is None:
                return Response("{}", media_type="application/json")
            try:
                body = await asyncio.wait_for(asyncio.shield(future), cls.WAIT_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                future.cancel()  # too late: the page sends it over the websocket instead
                body = "{}"
            return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def register_routes() -> None:
    """The charts' static files and `FirstHistory`'s endpoint, in NiceGUI's app (once)."""
    if not any(getattr(r, "path", None) == "/_acc/history/{token}" for r in app.routes):
        app.add_static_files(STATIC_URL, STATIC)
        FirstHistory.route()


class ChartGrid:
    """All metric charts of a page, in sections; new keys get a chart when their first point comes."""

    def __init__(self, sections: dict[str, ui.element], fetch: Callable[..., dict], keys: Iterable[str]) -> None:
        """Charts for `keys` right away, without their points: the page's first response then
        brings the chart code along, and the history follows as soon as it is loaded."""
        self.sections = sections
        self.fetch = fetch  # TrainerClient.metrics, called in a worker thread
        self.client = ui.context.client  # loads also run from background tasks, outside any UI context
        self.charts: dict[str, MetricChart] = {}
        self.run: int | None = None  # the run shown: None for the trainer's current one, live
        self.first: FirstHistory | None = None  # set by the page while the browser may fetch the first history
        self._pending: dict[str, Points] = {}
        self.markers: list[dict] = []  # as last sent
        with sections["loss"]:
            self.empty = ui.label("No curves in this run yet: add a task and press Start, or pick an earlier run.")
            self.empty.classes("text-grey-7")
        for key in sorted(keys, key=order):
            self._chart(key)

    def _chart(self, key: str) -> MetricChart:
        if key not in self.charts:
            with self.sections[section_of(key)]:
                self.charts[key] = MetricChart(key)
            self.empty.set_visibility(False)
        return self.charts[key]

    async def load(self, keys: list[str] | None = None) -> None:
        """Fetch history (downsampled) and send it: for every key anew, or for the given ones."""
        # A run started from a checkpoint begins with the curves that led there (its lineage).
        series = await run.io_bound(self.fetch, keys=keys, max_points=MAX_POINTS, run=self.run, ancestors=True)
        if series is None:  # NiceGUI is shutting down
            return
        if keys is None:  # charts of keys without points in this run go
            for key in [k for k in self.charts if not series.get(k, {}).get("step")]:
                self.charts.pop(key).element.delete()
            self.empty.set_visibility(not any(s["step"] for s in series.values()))
        batches, keep_newer = {}, keys is not None  # fetched again: live points past its end stay
        for key in sorted(series, key=order):
            points = [(s, _round(v)) for s, v in zip(series[key]["step"], series[key]["value"])]
            if points or key in self.charts:
                chart = self._chart(key)
                chart.reset(points, keep_newer)
                batches[chart.element.id] = points
        first, self.first = self.first, None
        if first is not None and first.give(_json(batches), self.client):
            return
        if batches:  # not awaited: before the browser connects, this waits for it in NiceGUI's outbox
            self.client.run_javascript(f"accCharts.set({_json(batches)}, {json.dumps(keep_newer)})")

    def set_markers(self, markers: list[dict]) -> None:
        """Mark these steps on every chart: `[{"step", "label"}]` (where the model grew)."""
        if markers != self.markers:
            self.markers = list(markers)
            self.client.run_javascript(f"accCharts.setMarkers({json.dumps(self.markers)})")

    def add(self, step: int, values: dict[str, float]) -> None:
        """Queue one step's values of the live run; sent with the next `flush`."""
        if self.run is not None:
            return
        for key, value in values.items():
            self._pending.setdefault(key, []).append((step, value))

    async def flush(self) -> list[str]:
        """Send what was queued, in one message, and wait until the browser has taken it. Returns
        the keys whose series have grown long enough to be fetched again, downsampled."""
        fresh, appended, too_long = {}, {}, []
        for key, points in sorted(self._pending.items(), key=lambda item: order(item[0])):
            chart = self.charts.get(key)
            if chart is not None and chart.last_step is not None:  # history fetched since may hold them
                points = [p for p in points if p[0] > chart.last_step]
            if not points:
                continue
            points = [(s, _round(v)) for s, v in thin(sorted(points))]
            (appended if chart is not None else fresh)[self._chart(key).element.id] = points
            self.charts[key].took(points)
            if self.charts[key].count > RELOAD_AT:
                too_long.append(key)
        self._pending.clear()
        if fresh or appended:
            try:
                await self.client.run_javascript(
                    f"accCharts.set({_json(fresh)}); accCharts.append({_json(appended)})", timeout=BROWSER_WAIT_S)
            except TimeoutError:  # a busy or vanished tab: carry on, NiceGUI keeps the message
                log.debug("the browser took more than %s s to take a batch of points", BROWSER_WAIT_S)
        return too_long


def _json(batches: dict[int, Points]) -> str:
    return json.dumps(batches, separators=(",", ":"))
