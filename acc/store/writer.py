"""The store's writer thread: metric, event and eval rows are only queued by the thread that logs
them (training must never wait on disk); this one thread drains the queue and commits it in batches
(every `flush_interval` seconds or every `BATCH_ROWS` rows) on its own connection, writing the metric
rollups (see `downsample`) in the same transaction as the raw rows."""

from __future__ import annotations

import queue
import sqlite3
import threading
import time as _time
from pathlib import Path
from typing import Any

import numpy as np

from acc.store import downsample
from acc.store.connection import connect, transaction

BATCH_ROWS = 5000  # commit once this many rows are queued, even before flush_interval

# A new block summary wins the min (max) when strictly lower (higher), or equal at an earlier step,
# and wins the last point when at the same or a later step: it was written later.
UPSERT_ROLLUP = """
INSERT INTO rollups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    min_step = CASE WHEN excluded.min_value < min_value
        OR (excluded.min_value = min_value AND excluded.min_step < min_step) THEN excluded.min_step ELSE min_step END,
    min_value = min(min_value, excluded.min_value),
    max_step = CASE WHEN excluded.max_value > max_value
        OR (excluded.max_value = max_value AND excluded.max_step < max_step) THEN excluded.max_step ELSE max_step END,
    max_value = max(max_value, excluded.max_value),
    last_step = max(last_step, excluded.last_step),
    last_value = CASE WHEN excluded.last_step >= last_step THEN excluded.last_value ELSE last_value END
"""

_STOP = object()  # queued by close(): the writer commits what came before and exits


class Batch:
    """What the writer commits in one transaction, and the flush() calls waiting for it."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, int, float, list[tuple[str, float]]]] = []
        self.events: list[tuple] = []
        self.evals: list[tuple] = []
        self.waiters: list[threading.Event] = []
        self.rows = 0

    def add(self, item: tuple) -> None:
        kind, payload = item
        if kind == "metrics":
            self.metrics.append(payload)
            self.rows += len(payload[3])
        elif kind == "event":
            self.events.append(payload)
            self.rows += 1
        elif kind == "eval":
            self.evals.append(payload)
            self.rows += 1
        else:
            self.waiters.append(payload)


class Writer:
    """The writer thread of one store file, with its queue. A batch that fails to commit is dropped,
    and its error kept for the next flush() or close() to raise; the thread carries on."""

    def __init__(self, path: Path, flush_interval: float) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed and _error
        self._closed = False
        self._error: BaseException | None = None
        self._key_ids: dict[str, int] = {}  # this thread's cache; keys are never deleted
        self._thread = threading.Thread(target=self._loop, name=f"store-writer:{path.name}", daemon=True)
        self._thread.start()

    def put(self, kind: str, payload: Any) -> None:
        """Queue one item ("metrics", "event", "eval"); returns at once."""
        with self._lock:  # so that nothing is queued behind close()'s _STOP and silently lost
            if self._closed:
                raise RuntimeError("store is closed")
            self._queue.put((kind, payload))

    def flush(self, timeout: float) -> None:
        done = threading.Event()
        self.put("flush", done)
        if not done.wait(timeout):
            raise TimeoutError(f"store writes not committed after {timeout} s")
        self._raise_error()

    def close(self) -> None:
        """Commit what is queued and stop the thread; raises its first unreported error, if any."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _loop(self) -> None:
        conn = connect(self.path)
        try:
            stopping = False
            while not stopping:
                batch = Batch()
                item = self._queue.get()
                deadline = _time.monotonic() + self.flush_interval
                while True:
                    if item is _STOP:
                        stopping = True
                        break
                    batch.add(item)
                    wait = deadline - _time.monotonic()
                    if batch.waiters or batch.rows >= BATCH_ROWS or wait <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=wait)
                    except queue.Empty:
                        break
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Write a batch in one transaction. A failure drops the batch and is kept for flush()/close()
        to raise: the writer carries on with the next batch."""
        try:
            with transaction(conn, "IMMEDIATE"):
                if batch.metrics:
                    self._write_metrics(conn, batch.metrics)
                conn.executemany("INSERT INTO events (run_id, time, step, kind, message, data)"
                                 " VALUES (?, ?, ?, ?, ?, ?)", batch.events)
                conn.executemany("INSERT INTO evals (run_id, step, time, results) VALUES (?, ?, ?, ?)", batch.evals)
        except Exception as e:
            self._key_ids.clear()  # ids inserted by the rolled-back transaction are gone
            with self._lock:
                self._error = self._error or e
        finally:
            for waiter in batch.waiters:
                waiter.set()

    def _write_metrics(self, conn: sqlite3.Connection, metrics: list) -> None:
        ids = self._key_ids
        rows = [(run_id, ids[key] if key in ids else self._key_id(conn, key), step, value, when)
                for run_id, step, when, pairs in metrics for key, value in pairs]
        conn.executemany("INSERT INTO metrics (run_id, key_id, step, value, time) VALUES (?, ?, ?, ?, ?)", rows)
        run, key, step, value, _ = (np.array(c) for c in zip(*rows))
        for level, run, key, bucket, s in downsample.rollups(run, key, step, value):
            conn.executemany(UPSERT_ROLLUP, [(r, level, k, b, *summary) for r, k, b, summary
                                             in zip(run.tolist(), key.tolist(), bucket.tolist(), s.rows())])

    def _key_id(self, conn: sqlite3.Connection, name: str) -> int:
        conn.execute("INSERT OR IGNORE INTO keys (name) VALUES (?)", (name,))  # another store may have added it
        self._key_ids[name] = conn.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone()[0]
        return self._key_ids[name]
