"""Benchmark of the dashboard: first draw over a long history, then steady traffic per open tab.

Run by hand from the repository root: `python benchmarks/bench_dashboard.py`. It starts a trainer
with 4 tasks whose run already holds 100,000 steps of history (written through the store, as if
it had trained that long), runs `acc ui` against it and opens the page in headless chromium:

- first draw: from navigation to every loss curve drawn with its history, in a new tab (median of
  3; the browser's cache holds NiceGUI's scripts, as on every visit after the first), and also on
  a first visit ever (a new browser profile, empty cache) and on a reload;
- steady traffic: websocket bytes a tab receives per second while the trainer trains;
- latency: from the trainer making a step to that step reaching the tab's charts.

Targets: first draw < 1.5 s, steady < 50 kB/s per tab.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*: the same trainer and browser set-up

from acc.engine import EngineConfig  # noqa: E402
from acc.ui.client import TrainerClient  # noqa: E402
from tests.server_fixtures import run_trainer  # noqa: E402
from tests.test_browser import chromium, run_dashboard_process  # noqa: E402

STEPS = 100_000
TASKS = [{"type": "ReconstructionTask", "name": "recon"}] + [
    {"type": "ClassificationTask", "name": f"digit_{latent}", "latent": latent}
    for latent in ("digit", "thickness", "style")]
KEYS = ["loss/total"] + [f"loss/{task['name']}" for task in TASKS]
CONFIG = EngineConfig(model={"name": "factor_slot", "factors": ["digit", "thickness", "slant", "style"]},
                      batch_size=64, eval_every=0, device="cpu")
WARMUP_S, MEASURE_S = 5.0, 10.0

ALL_DRAWN = f"""() => {{
  const s = window.accCharts && accCharts.summary();
  return s && {KEYS!r}.every((k) => s[k] && s[k].drawn > 1000) && performance.now();
}}"""


def write_history(session) -> None:
    """100,000 steps of 5 noisy decaying loss curves in the trainer's current run; training then
    goes on from there."""
    rng = np.random.default_rng(0)
    steps = np.arange(STEPS)
    curves = {key: (np.exp(-steps / 20_000) + 0.1 + 0.05 * rng.normal(size=STEPS)).clip(0.01) for key in KEYS}
    run_id = session.engine.run_id
    for i in range(STEPS):
        session.store.log_metrics(run_id, i, {key: float(curve[i]) for key, curve in curves.items()})
    session.store.flush(timeout=600)
    session.engine.step = STEPS  # the engine is idle: training continues after the history


def first_draw_ms(browser, url: str) -> tuple[float, float, float]:
    """Ms from navigation start to every curve drawn: in a new browser profile (empty cache, a
    first visit ever), in a second tab of that profile (its cache holds NiceGUI's scripts, as on
    any later visit), and when that tab reloads."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    first = context.new_page()
    first.goto(url)
    cold = first.wait_for_function(ALL_DRAWN, polling="raf", timeout=60_000).json_value()
    page = context.new_page()
    page.goto(url)
    cached = page.wait_for_function(ALL_DRAWN, polling="raf", timeout=60_000).json_value()
    page.reload()
    warm = page.wait_for_function(ALL_DRAWN, polling="raf", timeout=60_000).json_value()
    context.close()
    return cold, cached, warm


def steady_traffic(browser, url: str, client: TrainerClient) -> tuple[float, float]:
    """(kB/s received by one tab, median step-to-chart latency in s) while training."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    received: list[tuple[float, int]] = []

    def on_socket(ws) -> None:
        ws.on("framereceived", lambda frame: received.append((time.monotonic(), len(frame))))

    page.on("websocket", on_socket)
    page.goto(url)
    page.wait_for_function(ALL_DRAWN, timeout=60_000)
    client.train("start")
    page.wait_for_timeout(WARMUP_S * 1000)  # Playwright delivers events while it waits
    start = time.monotonic()
    latencies = []
    while time.monotonic() - start < MEASURE_S:
        step, asked = client.state()["step"], time.monotonic()
        page.wait_for_function(f"() => (accCharts.summary()['loss/total'] || {{}}).lastStep >= {step}",
                               timeout=30_000)
        latencies.append(time.monotonic() - asked)
        page.wait_for_timeout(500)
    elapsed = time.monotonic() - start
    client.train("stop")
    context.close()
    total = sum(size for when, size in received if start <= when <= start + elapsed)
    return total / elapsed / 1000, statistics.median(latencies)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"starting a trainer with {len(TASKS)} tasks and writing {STEPS:,} steps of history ...", flush=True)
        with run_trainer(Path(tmp), CONFIG, tasks=TASKS) as trainer:
            started = time.perf_counter()
            write_history(trainer.session)
            print(f"history written in {time.perf_counter() - started:.1f} s", flush=True)
            with TrainerClient(trainer.base_url) as client, run_dashboard_process(trainer.base_url) as url, \
                    chromium() as browser:
                cold, cached, warm = zip(*(first_draw_ms(browser, url) for _ in range(3)))
                print(f"first draw (ms): first visit in a new profile {[round(d) for d in cold]}, "
                      f"new tab later {[round(d) for d in cached]}, reload {[round(d) for d in warm]}")
                rate, latency = steady_traffic(browser, url, client)
                print(f"steady: {rate:.1f} kB/s per tab, step-to-chart latency {latency * 1000:.0f} ms (median)")
    print(f"dashboard: first draw {statistics.median(cached):.0f} ms in a new tab "
          f"({statistics.median(cold):.0f} ms on a first visit ever), steady {rate:.1f} kB/s per tab")


if __name__ == "__main__":
    main()
