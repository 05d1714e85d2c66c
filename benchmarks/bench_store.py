"""Benchmark of the metric store: insert rate, and downsampled queries over a million points.

Run by hand: `python benchmarks/bench_store.py`. Compares `Store.query_metrics` (rollups) against
the naive way measured in the same run: read every raw row of the key and downsample in numpy.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from acc.store import Store
from acc.store import downsample

N = 1_000_000
MAX_POINTS = 2000
PARTIAL = (123_457, 876_543)


def naive(conn: sqlite3.Connection, run_id: int, key: str, since: int, until: int) -> dict[str, list]:
    """Every raw row of the range through numpy, with the same bucket rule as the store."""
    rows = conn.execute(
        "SELECT m.step, m.value FROM metrics m JOIN keys k ON k.id = m.key_id"
        " WHERE m.run_id = ? AND k.name = ? AND m.step BETWEEN ? AND ? ORDER BY m.step, m.id",
        (run_id, key, since, until)).fetchall()
    step, value = (np.array(c) for c in zip(*rows))
    _, origin, width = downsample.plan(int(step[0]), int(step[-1]), MAX_POINTS // 3)
    s = downsample.Summary.of_points(step, value)
    _, buckets = downsample.merge(((step - origin) // width,), s, np.arange(len(step)))  # rows in (step, id) order
    steps, values = downsample.points(buckets)
    return {"step": steps, "value": values}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    values = (np.cumsum(rng.normal(size=N)) * 0.01 + rng.normal(size=N)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        with Store(path) as store:
            run = store.create_run("bench", {})
            start = time.perf_counter()
            for step, value in enumerate(values):
                store.log_metrics(run, step, {"loss": value})
            queued = time.perf_counter() - start
            store.flush(timeout=600)
            total = time.perf_counter() - start
            print(f"insert {N:,} points: {N / total:,.0f} points/s committed "
                  f"({total:.2f} s; log_metrics calls alone {queued:.2f} s, {queued / N * 1e6:.2f} us/call)")

            conn = sqlite3.connect(path)
            results = {}
            for label, (since, until) in {"full": (0, N), "partial": PARTIAL}.items():
                ours = store.query_metrics(run, ["loss"], since, until, MAX_POINTS)["loss"]
                assert ours == naive(conn, run, "loss", since, until), "rollups disagree with the raw rows"
                ours_ms = median_ms(lambda: store.query_metrics(run, ["loss"], since, until, MAX_POINTS), 20)
                naive_ms = median_ms(lambda: naive(conn, run, "loss", since, until), 5)
                results[label] = ours_ms, naive_ms
                print(f"{label} range steps {since}..{until}: {len(ours['step'])} points, "
                      f"{ours_ms:.1f} ms (naive {naive_ms:.1f} ms)")
            conn.close()
        print(f"database: {path.stat().st_size / 2**20:.0f} MiB")
    ours_ms, naive_ms = results["full"]
    print(f"query 1M points: {ours_ms:.1f} ms (naive: {naive_ms:.1f} ms, ratio {naive_ms / ours_ms:.0f})")


if __name__ == "__main__":
    main()
