"""The SQLite store: runs, metrics, events, evals and the checkpoint tree in one WAL-mode file.

The training thread must never wait on disk, so metric, event and eval writes only go on a queue
that one writer thread commits in batches (`writer`). Runs and checkpoints are written
synchronously. Reads use one connection per thread; WAL lets them run while the writer commits.
Several stores, in this or other processes, may open the same file.
"""

from __future__ import annotations

import json
import math
import operator
import sqlite3
import threading
import time as _time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from acc.store import downsample
from acc.store.connection import connect, transaction
from acc.store.downsample import SERIES, Summary
from acc.store.writer import Writer

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, key_id INTEGER NOT NULL, step INTEGER NOT NULL,
    value REAL NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_series ON metrics (run_id, key_id, step);
CREATE TABLE IF NOT EXISTS rollups (
    run_id INTEGER NOT NULL, level INTEGER NOT NULL, key_id INTEGER NOT NULL, bucket INTEGER NOT NULL,
    min_step INTEGER NOT NULL, min_value REAL NOT NULL, max_step INTEGER NOT NULL, max_value REAL NOT NULL,
    last_step INTEGER NOT NULL, last_value REAL NOT NULL,
    PRIMARY KEY (run_id, level, key_id, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, run_id INTEGER, time REAL NOT NULL, step INTEGER, kind TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS evals (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL,
    results TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS evals_run ON evals (run_id, id);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, run_id INTEGER, name TEXT NOT NULL, parent TEXT, step INTEGER NOT NULL,
    path TEXT NOT NULL, created REAL NOT NULL, meta TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS checkpoints_name ON checkpoints (name);
CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints (run_id);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, generator TEXT NOT NULL, params TEXT NOT NULL,
    seed INTEGER NOT NULL, n INTEGER NOT NULL, path TEXT, created REAL NOT NULL, error TEXT,
    info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS factoring (
    checkpoint_id TEXT NOT NULL, key TEXT NOT NULL, created REAL NOT NULL, report TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, key));
"""

SUMMARY_COLUMNS = "min_step, min_value, max_step, max_value, last_step, last_value"

def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable: {e}") from None


def _int(x: Any, what: str) -> int:
    try:
        return operator.index(x)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {x!r}") from None


def _float(x: Any, what: str) -> float:
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{what} must be a number, got {x!r}")
    try:
        return float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None


def _step(x: Any) -> int:
    step = _int(x, "step")
    if not 0 <= step < 1 << 62:
        raise ValueError(f"step must be in 0 .. 2**62 - 1, got {step}")
    return step


class Store:
    """The workspace database. Use as a context manager, or call close() to commit what is queued."""

    def __init__(self, path: str | Path, flush_interval: float = 0.2) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._lock = threading.Lock()  # guards _closed and _conns
        self._closed = False
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._init_schema()
        self._writer = Writer(self.path, flush_interval)

    def _init_schema(self) -> None:
        with closing(connect(self.path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")  # kept in the file; readers never block the writer
            with transaction(conn, "IMMEDIATE"):  # other processes may be creating it at the same time
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path} has schema version {version}; this ACC knows {SCHEMA_VERSION}")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit everything queued, stop the writer thread and close all connections; idempotent.
        Raises the writer's first unreported error, if any."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._writer.close()
        finally:
            with self._lock:
                for conn in self._conns:
                    conn.close()
                self._conns.clear()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until every write queued before this call is committed. Raises TimeoutError after
        `timeout` seconds, and the writer's error if a batch failed since the last flush."""
        self._writer.flush(timeout)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection for reads and synchronous writes."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("store is closed")
                conn = self._local.conn = connect(self.path)
                self._conns.append(conn)
        return conn

    # -- runs --------------------------------------------------------------------------------------

    def create_run(self, name: str, config: dict) -> int:
        """Record a new, open run (status "running") and return its id."""
        row = (name, _time.time(), _to_json(config, "config"), "running")
        with transaction(self._conn(), "IMMEDIATE") as conn:
            return conn.execute("INSERT INTO runs (name, created, config, status) VALUES (?, ?, ?, ?)", row).lastrowid

    def runs(self) -> list[dict]:
        """All runs, newest first."""
        rows = self._conn().execute("SELECT id, name, created, config, status FROM runs ORDER BY id DESC")
        return [self._run(row) for row in rows]

    def run(self, run_id: int) -> dict | None:
        """One run, or None."""
        row = self._conn().execute("SELECT id, name, created, config, status FROM runs WHERE id = ?",
                                   (run_id,)).fetchone()
        return self._run(row) if row else None

    @staticmethod
    def _run(row: tuple) -> dict:
        id, name, created, config, status = row
        return {"id": id, "name": name, "created": created, "config": json.loads(config), "status": status}

    def set_run_status(self, run_id: int, status: str) -> None:
        """Set a run's status: "running" while open, then "finished", "stopped" or "crashed"
        (see `acc.engine.runs`)."""
        with transaction(self._conn(), "IMMEDIATE") as conn:
            conn.execute("UPDATE runs SET status = ? WHERE id = ?", (str(status), run_id))

    # -- metrics -----------------------------------------------------------------------------------

    def log_metrics(self, run_id: int, step: int, values: dict[str, float], time: float | None = None) -> None:
        """Queue one step's metric values; returns at once. Values that are not finite are dropped."""
        run_id, step = _int(run_id, "run_id"), _step(step)
        when = _time.time() if time is None else _float(time, "time")
        if not isinstance(values, dict):
            raise ValueError(f"values must be a dict of key -> number, got {type(values).__name__}")
        pairs = []
        for key, value in values.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
            value = _float(value, key)
            if math.isfinite(value):
                pairs.append((key, value))
        if pairs:
            self._writer.put("metrics", (run_id, step, when, pairs))

    def metric_keys(self, run_id: int) -> list[str]:
        """The keys a run has metrics for, sorted."""
        rows = self._conn().execute(
            "SELECT k.name FROM rollups r JOIN keys k ON k.id = r.key_id WHERE r.run_id = ? AND r.level = ?"
            " ORDER BY k.name", (run_id, SERIES))
        return [name for name, in rows]

    def last_step(self, run_id: int) -> int | None:
        """The highest step with any metric of the run, or None."""
        return self._conn().execute("SELECT max(last_step) FROM rollups WHERE run_id = ? AND level = ?",
                                    (run_id, SERIES)).fetchone()[0]

    def query_metrics(self, run_id: int, keys: list[str] | None = None, since: int | None = None,
                      until: int | None = None, max_points: int = 2000) -> dict[str, dict[str, list]]:
        """Series of the run between steps `since` and `until` (inclusive), each downsampled to at
        most `max_points` points (>= 3) that keep every bucket's min, max and last point.

        Returns {key: {"step": [...], "value": [...]}} in step order; keys=None means all the run's
        keys, and a requested key without data comes back empty."""
        if max_points < 3:
            raise ValueError(f"max_points must be >= 3, got {max_points}")
        lo = 0 if since is None else max(0, _int(since, "since"))
        hi = (1 << 62) if until is None else _int(until, "until")
        with transaction(self._conn()) as conn:  # one snapshot: rollups and raw rows must agree
            if keys is None:
                ids = dict(conn.execute(
                    "SELECT k.name, k.id FROM rollups r JOIN keys k ON k.id = r.key_id"
                    " WHERE r.run_id = ? AND r.level = ? ORDER BY k.name", (run_id, SERIES)).fetchall())
            else:
                ids = {name: None for name in keys}
                marks = ",".join("?" * len(keys))
                ids.update(conn.execute(f"SELECT name, id FROM keys WHERE name IN ({marks})", keys).fetchall())
            return {name: self._series(conn, run_id, key_id, lo, hi, max_points) for name, key_id in ids.items()}

    @staticmethod
    def _series(conn: sqlite3.Connection, run_id: int, key_id: int | None, since: int, until: int,
                max_points: int) -> dict[str, list]:
        where = "FROM metrics WHERE run_id = ? AND key_id = ? AND step BETWEEN ? AND ?"
        args = (run_id, key_id, since, until)
        first = conn.execute(f"SELECT step {where} ORDER BY step LIMIT 1", args).fetchone()
        if first is None:  # also for an unknown key (key_id = NULL matches nothing)
            return {"step": [], "value": []}
        # Two single-row lookups on the index: cheaper than one min(), max() query, which scans.
        lo, hi = first[0], conn.execute(f"SELECT step {where} ORDER BY step DESC LIMIT 1", args).fetchone()[0]
        if conn.execute(f"SELECT step {where} ORDER BY step LIMIT 1 OFFSET ?", args + (max_points,)).fetchone() is None:
            # No more than max_points points: all of them, exactly.
            rows = conn.execute(f"SELECT step, value {where} ORDER BY step, id", args).fetchall()
            return {"step": [s for s, _ in rows], "value": [v for _, v in rows]}

        # Whole blocks from the rollups, raw points at the ends, read as one-point summaries in
        # (step, id) order so that their position orders duplicate steps; blocks never share a last step.
        level, origin, width = downsample.plan(lo, hi, max_points // 3)
        rows = []
        for part_level, first_block, last_block in downsample.cover(lo, hi, level):
            if part_level == 0:
                rows += conn.execute(f"SELECT step, value, step, value, step, value {where} ORDER BY step, id",
                                     (run_id, key_id, first_block, last_block))
            else:
                rows += conn.execute(
                    f"SELECT {SUMMARY_COLUMNS} FROM rollups WHERE run_id = ? AND level = ? AND key_id = ?"
                    " AND bucket BETWEEN ? AND ?", (run_id, part_level, key_id, first_block, last_block))
        s = Summary.of_columns(list(zip(*rows)))
        _, buckets = downsample.merge(((s.last_step - origin) // width,), s, np.arange(len(rows)))
        steps, values = downsample.points(buckets)
        return {"step": steps, "value": values}

    # -- events and evals --------------------------------------------------------------------------

    def log_event(self, run_id: int | None, kind: str, message: str, step: int | None = None,
                  data: dict | None = None) -> None:
        """Queue an event (a status change, an error, a checkpoint...); returns at once."""
        if not isinstance(kind, str) or not isinstance(message, str):
            raise ValueError("event kind and message must be strings")
        row = (None if run_id is None else _int(run_id, "run_id"), _time.time(),
               None if step is None else _step(step), kind, message, _to_json(data or {}, "event data"))
        self._writer.put("event", row)

    def events(self, run_id: int | None = None, kinds: list[str] | None = None, limit: int = 200) -> list[dict]:
        """The latest events, newest first, of one run (or of all) and of the given kinds (or all)."""
        where, args = [], []
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if kinds is not None:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        sql = "SELECT id, run_id, time, step, kind, message, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        names = ("id", "run_id", "time", "step", "kind", "message")
        return [{**dict(zip(names, row)), "data": json.loads(row[6])} for row in rows]

    def log_eval(self, run_id: int, step: int, results: dict[str, dict[str, float]]) -> None:
        """Queue one evaluation's results, {task: {metric: value}}; returns at once."""
        if not isinstance(results, dict) or not all(isinstance(r, dict) for r in results.values()):
            raise ValueError("eval results must be a dict of task -> {metric: value}")
        clean = {task: {k: _float(v, f"{task}/{k}") for k, v in r.items()} for task, r in results.items()}
        self._writer.put("eval", (_int(run_id, "run_id"), _step(step), _time.time(), _to_json(clean, "eval results")))

    def evals(self, run_id: int, limit: int = 100) -> list[dict]:
        """The run's latest evaluations, newest first."""
        rows = self._conn().execute(
            "SELECT run_id, step, time, results FROM evals WHERE run_id = ? ORDER BY id DESC LIMIT ?",
            (run_id, limit))
        return [{"run_id": r, "step": s, "time": t, "results": json.loads(res)} for r, s, t, res in rows]

    # -- checkpoints -------------------------------------------------------------------------------

    def add_checkpoint(self, id: str, run_id: int | None, name: str, parent: str | None, step: int, path: str,
                       meta: dict) -> None:
        """Record a checkpoint written at `path`; returns once committed. Raises ValueError if the id exists."""
        row = (id, run_id, name, parent, _step(step), str(path), _time.time(), _to_json(meta, "checkpoint meta"))
        try:
            with transaction(self._conn(), "IMMEDIATE") as conn:
                conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            raise ValueError(f"checkpoint {id!r} already exists") from None

    def checkpoints(self, run_id: int | None = None) -> list[dict]:
        """All checkpoints, or those of one run, oldest first."""
        sql = "SELECT * FROM checkpoints" + (" WHERE run_id = ?" if run_id is not None else "")
        rows = self._conn().execute(sql + " ORDER BY created, rowid", () if run_id is None else (run_id,))
        return [self._checkpoint(row) for row in rows]

    def checkpoint(self, id_or_name: str) -> dict | None:
        """The checkpoint with this id, else the newest with this name, else None."""
        row = self._conn().execute(
            "SELECT * FROM checkpoints WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC, created DESC, rowid DESC"
            " LIMIT 1", (id_or_name,)).fetchone()
        return self._checkpoint(row) if row else None

    @staticmethod
    def _checkpoint(row: tuple) -> dict:
        id, run_id, name, parent, step, path, created, meta = row
        return {"id": id, "run_id": run_id, "name": name, "parent": parent, "step": step, "path": path,
                "created": created, "meta": json.loads(meta)}

    def delete_checkpoint(self, id: str) -> None:
        """Forget a checkpoint (its children keep their parent id); its files are the caller's."""
        with transaction(self._conn(), "IMMEDIATE") as conn:
            conn.execute("DELETE FROM checkpoints WHERE id = ?", (id,))
            conn.execute("DELETE FROM factoring WHERE checkpoint_id = ?", (id,))

    # -- datasets ----------------------------------------------------------------------------------

    def put_dataset(self, name: str, *, status: str, generator: str, params: dict, seed: int, n: int,
                    path: str | None = None, error: str | None = None, info: dict | None = None) -> None:
        """Record (or update) a generated dataset; returns once committed."""
        row = (name, status, generator, _to_json(params, "dataset params"), _int(seed, "seed"), _int(n, "n"),
               None if path is None else str(path), _time.time(), error, _to_json(info or {}, "dataset info"))
        with transaction(self._conn(), "IMMEDIATE") as conn:
            conn.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def datasets(self) -> list[dict]:
        """Every recorded dataset, oldest first."""
        rows = self._conn().execute("SELECT * FROM datasets ORDER BY created, rowid")
        return [self._dataset(row) for row in rows]

    def dataset(self, name: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return self._dataset(row) if row else None

    @staticmethod
    def _dataset(row: tuple) -> dict:
        name, status, generator, params, seed, n, path, created, error, info = row
        return {"name": name, "status": status, "generator": generator, "params": json.loads(params),
                "seed": seed, "n": n, "path": path, "created": created, "error": error, "info": json.loads(info)}

    def delete_dataset(self, name: str) -> None:
        """Forget a dataset's row; its file is the caller's."""
        with transaction(self._conn(), "IMMEDIATE") as conn:
            conn.execute("DELETE FROM datasets WHERE name = ?", (name,))

    # -- factoring reports (M5) ----------------------------------------------------------------------

    def put_factoring(self, checkpoint_id: str, key: str, report: dict) -> None:
        """Record a checkpoint's factoring report for these settings (`key`); returns once committed."""
        row = (checkpoint_id, key, _time.time(), _to_json(report, "factoring report"))
        with transaction(self._conn(), "IMMEDIATE") as conn:
            conn.execute("INSERT OR REPLACE INTO factoring VALUES (?, ?, ?, ?)", row)

    def factoring(self, checkpoint_id: str, key: str | None = None) -> dict | None:
        """The report for these settings, or (no key) the newest report of the checkpoint; with
        `key` and `created` added."""
        query = "SELECT key, created, report FROM factoring WHERE checkpoint_id = ?"
        args: tuple = (checkpoint_id,)
        if key is not None:
            query, args = query + " AND key = ?", (checkpoint_id, key)
        row = self._conn().execute(query + " ORDER BY created DESC LIMIT 1", args).fetchone()
        return {**json.loads(row[2]), "key": row[0], "created": row[1]} if row else None

    def newest_ufrs(self) -> dict[str, float | None]:
        """Each evaluated checkpoint's UFR from its newest report, in one query (the tree's badges)."""
        rows = self._conn().execute(
            "SELECT checkpoint_id, json_extract(report, '$.ufr') FROM factoring AS f WHERE created = "
            "(SELECT MAX(created) FROM factoring WHERE checkpoint_id = f.checkpoint_id)").fetchall()
        return dict(rows)
