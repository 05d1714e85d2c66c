"""Subscribers: the callbacks one publisher (the engine, the job manager) calls on each event."""

from __future__ import annotations

import logging
from typing import Callable, Generic, TypeVar

log = logging.getLogger(__name__)
E = TypeVar("E")


class Subscribers(Generic[E]):
    def __init__(self) -> None:
        self._callbacks: list[Callable[[E], None]] = []

    def add(self, callback: Callable[[E], None]) -> Callable[[], None]:
        """Subscribe; returns the function that unsubscribes."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def publish(self, event: E) -> None:
        """Call every subscriber; one that raises is logged and never stops the publisher."""
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed")
