"""How a run ends: `finished`, `stopped` or `crashed`, and how a crash is told from a live run.

A run is open (`running`) while an engine holds it. Each engine holds an exclusive `flock` on a
lock file of its own in `<workspace>/locks/` and records that file in its runs' config as their
owner. The kernel drops the lock when the process dies, however it dies (`kill -9` included), so
a run found open at start whose owner's lock can be taken has crashed, while a run held by a live
trainer in another process (several may share a workspace) is left alone.

`RunBookkeeping`, a mixin of `Engine` (acc/engine/trainer.py), opens the engine's runs under its
owner lock and ends each one as `finished` or `stopped`.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from acc.store import Store

OPEN = ("running", "created")  # "created": runs written before runs had owners


class OwnerLock:
    """This process's claim on the runs it opens; released by `close` or by the process's death."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"engine-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
            self.path.unlink(missing_ok=True)


def _owner_alive(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)  # a dead owner's file
    return False


def mark_crashed(store: Store, folder: Path) -> list[int]:
    """Set `crashed` on every open run whose owner is gone; returns their ids."""
    crashed = []
    for run in store.runs():
        if run["status"] not in OPEN:
            continue
        owner = run["config"].get("owner")
        if owner and _owner_alive(folder / owner):
            continue
        store.set_run_status(run["id"], "crashed")
        crashed.append(run["id"])
    return crashed


class RunBookkeeping:
    """Open and end the engine's runs; see the module docstring."""

    _interrupted = False  # the current run's training was stopped before its end

    def _new_run(self, name: str | None = None, ended: str | None = None, **extra: Any) -> int:
        """End the current run (if any; as `ended`, else as `_end_run` judges) and open a new one,
        owned by this process."""
        if self.run_id is not None:
            self._end_run(ended)
        self._interrupted, self._training_s = False, 0.0
        name = name or self.config.run_name or time.strftime("run-%Y%m%d-%H%M%S")
        return self.store.create_run(name, {"engine": asdict(self.config), "model": self.model.config(),
                                            "owner": self.owner.name, **extra})

    def _end_run(self, status: str | None = None) -> None:
        """`stopped` if its training was cut short (stopped by hand, or replaced or closed while
        running or paused), else `finished`; or the `status` given."""
        cut = self._interrupted or self.status in ("running", "paused")
        self.store.set_run_status(self.run_id, status or ("stopped" if cut else "finished"))
