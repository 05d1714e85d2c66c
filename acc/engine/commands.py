"""Commands to the engine thread: anyone may submit, only the engine thread applies them.

Each command carries a Future that the engine resolves once the command has been applied (or
fails with the error that stopped it), so callers get an acknowledgement, not a hope.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Command:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    future: Future = field(default_factory=Future)


class CommandQueue:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()

    def submit(self, kind: str, **args: Any) -> Future:
        command = Command(kind, args)
        self._queue.put(command)
        return command.future

    def get(self, timeout: float | None) -> Command | None:
        """Next command; waits up to `timeout` seconds (None: forever, 0: not at all)."""
        try:
            if timeout == 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
