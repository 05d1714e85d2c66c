"""Tests for acc.store: round trips, downsampling against a brute-force reference, the writer thread."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections import defaultdict

import numpy as np
import pytest

from acc.store import Store
from acc.store.downsample import LEVELS, plan


def reference(points: list[tuple[int, float]], since: int | None, until: int | None,
              max_points: int) -> tuple[list[int], list[float]]:
    """The bucket rule by brute force over `points`, given in the order they were written."""
    lo_bound, hi_bound = since if since is not None else 0, until if until is not None else math.inf
    pts = sorted(((s, v, i) for i, (s, v) in enumerate(points) if lo_bound <= s <= hi_bound),
                 key=lambda p: (p[0], p[2]))
    if len(pts) <= max_points:
        return [p[0] for p in pts], [p[1] for p in pts]
    _, origin, width = plan(pts[0][0], pts[-1][0], max_points // 3)
    buckets = defaultdict(list)
    for p in pts:
        buckets[(p[0] - origin) // width].append(p)
    out: list[tuple[int, float]] = []
    for b in sorted(buckets):
        group = buckets[b]
        low = min(group, key=lambda p: (p[1], p[0]))[:2]
        high = min(group, key=lambda p: (-p[1], p[0]))[:2]
        last = max(group, key=lambda p: (p[0], p[2]))[:2]
        out += sorted({low, high} - {last}) + [last]
    return [s for s, _ in out], [v for _, v in out]


def as_pairs(series: dict[str, list]) -> list[tuple[int, float]]:
    return list(zip(series["step"], series["value"]))


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "acc.sqlite") as s:
        yield s


# -- round trips ------------------------------------------------------------------------------------

def test_runs_round_trip_and_reopen(tmp_path):
    path = tmp_path / "acc.sqlite"
    with Store(path) as store:
        first = store.create_run("first", {"lr": 0.001, "tasks": ["a", "b"]})
        second = store.create_run("second", {})
        store.set_run_status(first, "finished")
        assert [r["id"] for r in store.runs()] == [second, first]
        assert store.run(first)["config"] == {"lr": 0.001, "tasks": ["a", "b"]}
        assert store.run(first)["status"] == "finished"
        assert store.run(second)["status"] == "running"
        assert store.run(12345) is None
        before = store.runs()
    with Store(path) as store:
        assert store.runs() == before
        assert set(before[0]) == {"id", "name", "created", "config", "status"}


def test_events_and_evals_round_trip_and_reopen(tmp_path):
    path = tmp_path / "acc.sqlite"
    with Store(path) as store:
        run = store.create_run("r", {})
        store.log_event(run, "status", "status running", step=0, data={"status": "running"})
        store.log_event(run, "error", "task x failed", step=5, data={"task": "x"})
        store.log_event(None, "registry", "tasks reloaded")
        store.log_eval(run, 100, {"digits": {"accuracy": 0.5, "loss": 1.25}})
        store.log_eval(run, 200, {"digits": {"accuracy": 0.75, "loss": 0.5}, "slant": {"r2": 0.9}})
        store.flush()
        events = store.events()
    with Store(path) as store:
        assert store.events() == events
        assert [e["kind"] for e in events] == ["registry", "error", "status"]
        assert events[0]["run_id"] is None and events[0]["data"] == {} and events[0]["step"] is None
        assert events[1] | {"id": 0, "time": 0} == {"id": 0, "run_id": run, "time": 0, "step": 5, "kind": "error",
                                                    "message": "task x failed", "data": {"task": "x"}}
        assert [e["kind"] for e in store.events(run_id=run)] == ["error", "status"]
        assert [e["kind"] for e in store.events(kinds=["status", "registry"])] == ["registry", "status"]
        assert len(store.events(limit=1)) == 1
        evals = store.evals(run)
        assert [e["step"] for e in evals] == [200, 100]
        assert evals[0]["results"] == {"digits": {"accuracy": 0.75, "loss": 0.5}, "slant": {"r2": 0.9}}
        assert set(evals[0]) == {"run_id", "step", "time", "results"}
        assert len(store.evals(run, limit=1)) == 1 and store.evals(run + 1) == []


def test_checkpoints_round_trip_and_reopen(tmp_path):
    path = tmp_path / "acc.sqlite"
    with Store(path) as store:
        run = store.create_run("r", {})
        store.add_checkpoint("c1", run, "base", None, 1000, "/ck/c1", {"metrics": {"loss": 0.5}})
        store.add_checkpoint("c2", run, "fork_a", "c1", 1500, "/ck/c2", {})
        store.add_checkpoint("c3", None, "base", "c1", 2000, "/ck/c3", {"note": "same name, newer"})
        with pytest.raises(ValueError):
            store.add_checkpoint("c1", run, "again", None, 0, "/ck/x", {})
    with Store(path) as store:
        assert [c["id"] for c in store.checkpoints()] == ["c1", "c2", "c3"]
        assert [c["id"] for c in store.checkpoints(run)] == ["c1", "c2"]
        assert store.checkpoint("c1") == {"id": "c1", "run_id": run, "name": "base", "parent": None, "step": 1000,
                                          "path": "/ck/c1", "created": store.checkpoint("c1")["created"],
                                          "meta": {"metrics": {"loss": 0.5}}}
        assert store.checkpoint("base")["id"] == "c3"  # the newest with that name
        assert store.checkpoint("fork_a")["parent"] == "c1"
        assert store.checkpoint("nope") is None
        store.delete_checkpoint("c3")
        assert store.checkpoint("base")["id"] == "c1"
    with Store(path) as store:
        assert [c["id"] for c in store.checkpoints()] == ["c1", "c2"]



def test_factoring_reports_newest_wins_and_the_listing_has_each_ufr(store):
    store.add_checkpoint("c1", None, "a", None, 10, "/ck/c1", {})
    store.add_checkpoint("c2", None, "b", "c1", 20, "/ck/c2", {})
    store.add_checkpoint("c3", None, "c", "c1", 30, "/ck/c3", {})
    store.put_factoring("c1", "settings-1", {"ufr": 0.25})
    store.put_factoring("c1", "settings-2", {"ufr": 0.5})  # newer settings: the badge shows this one
    store.put_factoring("c2", "settings-1", {"ufr": None})  # a model without a score is listed as such
    assert store.factoring("c1")["ufr"] == 0.5 and store.factoring("c1", "settings-1")["ufr"] == 0.25
    assert store.newest_ufrs() == {"c1": 0.5, "c2": None}  # c3 has never been evaluated
    store.put_factoring("c1", "settings-1", {"ufr": 0.75})  # re-run of the older settings: newest again
    assert store.newest_ufrs()["c1"] == 0.75
    store.delete_checkpoint("c1")
    assert store.newest_ufrs() == {"c2": None} and store.factoring("c1") is None

def test_metrics_round_trip_keys_and_reopen(tmp_path):
    path = tmp_path / "acc.sqlite"
    with Store(path) as store:
        run, other = store.create_run("r", {}), store.create_run("other", {})
        for step in range(10):
            store.log_metrics(run, step, {"loss/total": 1.0 / (step + 1), "lr": 0.01}, time=1000.0 + step)
        store.log_metrics(other, 50, {"loss/total": 9.0})
    with Store(path) as store:
        assert store.metric_keys(run) == ["loss/total", "lr"]
        assert store.last_step(run) == 9 and store.last_step(other) == 50 and store.last_step(999) is None
        series = store.query_metrics(run)
        assert series["loss/total"] == {"step": list(range(10)), "value": [1.0 / (s + 1) for s in range(10)]}
        assert store.query_metrics(run, keys=["lr", "missing"]) == {
            "lr": {"step": list(range(10)), "value": [0.01] * 10}, "missing": {"step": [], "value": []}}
        assert store.query_metrics(run, ["lr"], since=3, until=5)["lr"]["step"] == [3, 4, 5]
        assert store.query_metrics(run, ["lr"], since=20)["lr"]["step"] == []
        assert store.query_metrics(other) == {"loss/total": {"step": [50], "value": [9.0]}}


def test_two_stores_share_a_file(tmp_path):
    path = tmp_path / "acc.sqlite"
    with Store(path) as a, Store(path) as b:
        run = a.create_run("r", {})
        a.log_metrics(run, 1, {"x": 1.0})
        b.log_metrics(run, 2, {"x": 2.0})
        a.flush()
        b.flush()
        assert a.query_metrics(run) == b.query_metrics(run) == {"x": {"step": [1, 2], "value": [1.0, 2.0]}}


# -- downsampling -------------------------------------------------------------------------------------

def test_downsampling_keeps_spike_dip_and_last_point(store):
    rng = np.random.default_rng(1)
    n = 100_000
    values = np.convolve(rng.normal(size=n + 99), np.ones(100) / 100, mode="valid")  # smooth noise
    spike, dip = rng.choice(n - 1, size=2, replace=False)
    values[spike], values[dip] = 1000.0, -1000.0
    run = store.create_run("r", {})
    for step, value in enumerate(values.tolist()):
        store.log_metrics(run, step, {"loss": value})
    store.flush()

    got = store.query_metrics(run, max_points=500)["loss"]
    assert 100 < len(got["step"]) <= 500
    assert np.all(np.diff(got["step"]) > 0)
    pairs = as_pairs(got)
    assert (int(spike), 1000.0) in pairs and (int(dip), -1000.0) in pairs
    assert pairs[-1] == (n - 1, values[-1])
    points = list(enumerate(values.tolist()))
    cases = [(None, None, 500), (spike - 5000, spike + 7000, 300), (12_345, 98_765, 2000), (40_000, 40_400, 150),
             (40_000, 40_300, 150)]  # the last two: buckets of 8 steps (finest rollup level), of 6 (raw points)
    for since, until, max_points in cases:
        got = store.query_metrics(run, since=since, until=until, max_points=max_points)["loss"]
        assert (got["step"], got["value"]) == reference(points, since, until, max_points)


@pytest.fixture(scope="module")
def irregular(tmp_path_factory):
    """A store with two irregular series, x and y = -x: a dense start, then gaps, repeated steps, tied
    values, steps rewritten later, one far-away step; written in many batches, so that rollup rows
    are merged across them, next to another run's points."""
    rng = np.random.default_rng(7)
    gaps = np.concatenate([rng.choice([0, 1, 1, 1], size=10_000), rng.choice([0, 1, 1, 1, 2, 5, 300], size=50_000)])
    steps = np.cumsum(gaps).tolist() + [5_000_000]
    values = np.round(rng.normal(size=len(steps)), 1).tolist()  # one decimal: many tied min/max values
    rewrites = rng.choice(steps[:-1], size=300).tolist()
    points = list(zip(steps, values)) + [(s, float(i % 7)) for i, s in enumerate(rewrites)]
    with Store(tmp_path_factory.mktemp("irregular") / "acc.sqlite") as store:
        run, other = store.create_run("r", {}), store.create_run("other", {})
        for i, (step, value) in enumerate(points):
            store.log_metrics(run, step, {"x": value, "y": -value})
            store.log_metrics(other, step, {"x": 1e6})
            if i % 20_000 == 0:
                store.flush()
        store.flush()
        yield store, run, points


@pytest.mark.parametrize("since, until, max_points", [
    (None, None, 2000), (None, None, 500), (None, None, 3), (None, None, 10),
    (1000, None, 999), (123, 45_678, 300), (4097, 262_143, 64), (4096, 262_144, 64),
    (70_001, 70_777, 100), (10_000, 12_000, 5000), (None, 4_999_999, 2000), (1_000_000, 6_000_000, 30),
    (5_000_000, None, 3), (6_000_000, None, 100), (50, 40, 100), (100, 1500, 600),
])
def test_downsampling_matches_reference(irregular, since, until, max_points):
    store, run, points = irregular
    got = store.query_metrics(run, since=since, until=until, max_points=max_points)
    assert (got["x"]["step"], got["x"]["value"]) == reference(points, since, until, max_points)
    assert (got["y"]["step"], got["y"]["value"]) == reference([(s, -v) for s, v in points], since, until, max_points)
    assert len(got["x"]["step"]) <= max_points


def test_short_series_come_back_exactly(store):
    run = store.create_run("r", {})
    points = [(0, 1.0), (3, -2.0), (3, 5.0), (10, 0.5), (11, 0.25)]
    for step, value in points:
        store.log_metrics(run, step, {"x": value})
    store.flush()
    assert as_pairs(store.query_metrics(run, max_points=5)["x"]) == points
    assert len(store.query_metrics(run, max_points=4)["x"]["step"]) <= 4
    with pytest.raises(ValueError):
        store.query_metrics(run, max_points=2)


@pytest.mark.parametrize("seed", range(5))
def test_plan_buckets_fit_blocks(seed):
    rng = np.random.default_rng(seed)
    for _ in range(2000):
        lo = int(rng.integers(0, 1 << int(rng.integers(1, 40))))
        hi = lo + int(rng.integers(0, 1 << int(rng.integers(1, 30))))
        buckets = int(rng.integers(1, 3000))
        level, origin, width = plan(lo, hi, buckets)
        assert level in (0, *LEVELS) and origin <= lo and origin % (1 << level) == 0 and width % (1 << level) == 0
        count = (hi - origin) // width + 1
        assert count <= buckets
        assert count >= min(buckets, hi - lo + 1) // 2  # fitting to blocks never costs half the buckets


# -- the writer thread -----------------------------------------------------------------------------

def test_concurrent_logging_and_queries(store):
    run = store.create_run("r", {})
    steps, errors = 20_000, []
    done = threading.Event()

    def log() -> None:
        try:
            for step in range(steps):
                store.log_metrics(run, step, {"a": step * 0.5, "b": -step, "c": math.sin(step)})
                if step % 5000 == 0:
                    store.flush()
        except Exception as e:
            errors.append(e)
        finally:
            done.set()

    def query() -> None:
        try:
            while not done.is_set():
                for series in store.query_metrics(run, max_points=300).values():
                    assert len(series["step"]) <= 300 and series["step"] == sorted(series["step"])
                store.metric_keys(run)
                store.last_step(run)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=log), threading.Thread(target=query), threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    assert errors == []
    full = store.query_metrics(run, max_points=steps)
    assert {k: len(v["step"]) for k, v in full.items()} == {"a": steps, "b": steps, "c": steps}
    assert full["b"]["value"][-1] == -(steps - 1) and store.last_step(run) == steps - 1


def test_log_metrics_does_not_wait_for_a_locked_database(tmp_path):
    path = tmp_path / "acc.sqlite"
    with Store(path) as store:
        run = store.create_run("r", {})
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        try:
            store.log_metrics(run, 0, {"x": 0.0})
            with pytest.raises(TimeoutError):
                store.flush(timeout=0.5)  # the writer is stuck behind the lock...
            for step in range(1, 20_001):
                store.log_metrics(run, step, {"x": float(step)})  # ...yet logging goes on
            store.log_event(run, "note", "still not blocked")
            assert blocker.in_transaction  # every call above returned while the lock was held
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        store.flush()
        assert len(store.query_metrics(run, max_points=30_000)["x"]["step"]) == 20_001
        assert store.events(run)[0]["message"] == "still not blocked"


def test_non_finite_values_are_dropped(store):
    run = store.create_run("r", {})
    store.log_metrics(run, 0, {"a": math.nan, "b": 1.0, "c": math.inf, "d": -math.inf})
    store.log_metrics(run, 1, {"a": float("nan")})
    store.log_metrics(run, 2, {"a": np.float32(2.5), "b": np.float64("nan")})
    store.flush()
    assert store.query_metrics(run) == {"a": {"step": [2], "value": [2.5]}, "b": {"step": [0], "value": [1.0]}}


@pytest.mark.parametrize("call", [
    lambda s, r: s.log_metrics(r, 0, {"x": "1.5"}),
    lambda s, r: s.log_metrics(r, 0, {"x": None}),
    lambda s, r: s.log_metrics(r, 0, {"x": [1.0]}),
    lambda s, r: s.log_metrics(r, 0, {3: 1.0}),
    lambda s, r: s.log_metrics(r, 0, [("x", 1.0)]),
    lambda s, r: s.log_metrics(r, -1, {"x": 1.0}),
    lambda s, r: s.log_metrics(r, 1.5, {"x": 1.0}),
    lambda s, r: s.log_metrics(r, 1 << 62, {"x": 1.0}),
    lambda s, r: s.log_metrics("run", 0, {"x": 1.0}),
    lambda s, r: s.log_metrics(r, 0, {"x": 1.0}, time="now"),
    lambda s, r: s.log_event(r, "note", "m", data={"x": object()}),
    lambda s, r: s.log_event(r, None, "m"),
    lambda s, r: s.log_eval(r, 0, {"task": 0.5}),
    lambda s, r: s.log_eval(r, 0, {"task": {"acc": "high"}}),
    lambda s, r: s.create_run("r", {"x": object()}),
    lambda s, r: s.add_checkpoint("c", r, "c", None, 0, "/p", {"x": {1, 2}}),
])
def test_malformed_calls_raise_in_the_caller(store, call):
    run = store.create_run("r", {})
    with pytest.raises(ValueError):
        call(store, run)
    store.flush()  # nothing bad reached the writer
    assert store.query_metrics(run) == {} and store.events(run) == [] and store.evals(run) == []


def test_writer_errors_surface_at_flush_and_close(tmp_path):
    path = tmp_path / "acc.sqlite"
    store = Store(path)
    run = store.create_run("r", {})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TRIGGER refuse BEFORE INSERT ON metrics BEGIN SELECT RAISE(ABORT, 'refused'); END")
    store.log_metrics(run, 0, {"x": 1.0})
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        store.flush()
    store.flush()  # reported once; the writer lives on
    other.execute("DROP TRIGGER refuse")
    store.log_metrics(run, 1, {"x": 2.0})
    store.flush()
    assert store.query_metrics(run)["x"] == {"step": [1], "value": [2.0]}  # the failed batch was dropped whole

    other.execute("CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'refused'); END")
    store.log_event(run, "note", "lost")
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        store.close()
    store.close()  # idempotent
    other.close()
    with pytest.raises(RuntimeError):
        store.log_metrics(run, 2, {"x": 3.0})
