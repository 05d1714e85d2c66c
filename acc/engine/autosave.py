"""Autosaves: the live training written to `<workspace>/autosaves/` every few minutes, so that a
crash (a `kill -9`, a power cut) loses at most that much training.

An autosave is a checkpoint folder in the usual format (`acc.engine.checkpoint`, written
atomically), not a node of the checkpoint tree: the tree holds what the researcher saved, this
folder holds what the trainer kept for them. Only the newest `keep` stay, and a write that would
leave the disk nearly full is skipped with a warning rather than fill it. The engine copies the
tensors on its own thread (a consistent state between two steps); the disk write happens on a
thread of its own, so training does not wait for the disk. Folder names begin with the time, so
they sort oldest first.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from acc.engine.checkpoint import remove_incomplete, write_checkpoint

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 512 * 1024 * 1024  # an autosave never takes the disk below this


@dataclass(frozen=True)
class Autosave:
    path: Path
    meta: dict


class Autosaver:
    def __init__(self, folder: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"autosave_keep must be at least 1, got {keep}")
        self.folder, self.keep = folder, keep
        self._writer: threading.Thread | None = None
        self.last_error: str | None = None
        remove_incomplete(folder)

    def busy(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def write(self, weights: dict[str, torch.Tensor], optimizer: dict[str, dict[str, torch.Tensor]],
              meta: dict, wait: bool = False) -> bool:
        """Write an autosave of these (CPU) tensors in the background; False when skipped because
        the previous one is still being written or the disk is nearly full (`last_error` says)."""
        if self.busy():
            if not wait:
                return False
            self.wait()
        size = sum(t.numel() * t.element_size() for t in weights.values())
        size += sum(t.numel() * t.element_size() for state in optimizer.values() for t in state.values())
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if free < MIN_FREE_BYTES + 2 * size:
            self.last_error = (f"autosave skipped: {free / 2**20:.0f} MiB free in {self.folder}, "
                               f"below {(MIN_FREE_BYTES + 2 * size) / 2**20:.0f} MiB")
            return False
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._writer = threading.Thread(target=self._write, args=(name, weights, optimizer, meta),
                                        name="acc-autosave", daemon=True)
        self._writer.start()
        if wait:
            self.wait()
        return True

    def wait(self, timeout: float | None = 60) -> None:
        if self._writer is not None:
            self._writer.join(timeout)

    def _write(self, name: str, weights: dict, optimizer: dict, meta: dict) -> None:
        try:
            write_checkpoint(self.folder, name, weights, optimizer, {**meta, "autosave": True})
            self.last_error = None
        except Exception as e:  # a full disk, a permission: reported, never fatal to training
            self.last_error = f"autosave failed: {type(e).__name__}: {e}"
            log.warning(self.last_error)
            return
        for old in self.all()[:-self.keep]:
            shutil.rmtree(old.path, ignore_errors=True)

    def all(self) -> list[Autosave]:
        """The complete autosaves, oldest first (a folder whose meta cannot be read is left out)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                found.append(Autosave(path, json.loads((path / "meta.json").read_text())))
            except (OSError, ValueError):
                continue
        return found

    def latest(self, run_id: int) -> Autosave | None:
        """The newest autosave of run `run_id`, or None."""
        mine = [a for a in self.all() if a.meta.get("run_id") == run_id]
        return mine[-1] if mine else None
