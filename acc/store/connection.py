"""How the store opens an SQLite connection, and the explicit transactions it writes in."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another connection's transaction


def connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are opened explicitly. Each connection stays in one thread at a
    # time, but close() may run in another, hence check_same_thread=False.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable across crashes of the process
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
    """Commit on success, roll back on any exception."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
