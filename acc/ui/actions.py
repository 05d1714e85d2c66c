"""Calling the trainer from a page: off the event loop, failures shown as notifications.

`fetch` runs a read in a worker thread and gives None when it failed. `act` runs an action the
same way; a `TrainerError` (the API's 4xx detail, or the trainer being unreachable) becomes a
notification and the result `FAILED`, never an exception in the page. `Debounce` sends the last
of a quick series of values (a dragged slider) once they stop coming, one send at a time, so the
trainer sees them in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import background_tasks, run, ui

from acc.ui.client import TrainerError

log = logging.getLogger(__name__)

FAILED = object()  # what `act` returns when the call failed (a call may return None)


async def fetch(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A read in a worker thread; None when it failed (the banner shows an unreachable trainer)."""
    try:
        return await run.io_bound(method, *args, **kwargs)
    except TrainerError as e:
        log.info("dashboard read failed: %s", e)
        return None


async def act(what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`method(*args, **kwargs)` in a worker thread; on failure notify "what failed: detail"."""
    try:
        return await run.io_bound(method, *args, **kwargs)
    except TrainerError as e:
        ui.notify(f"{what} failed: {e.detail}", type="negative", multi_line=True, close_button=True)
        return FAILED


class Debounce:
    """Calls `send(value)` `delay` seconds after the last `push`, in the context of `owner`."""

    def __init__(self, owner: ui.element, send: Callable[[Any], Awaitable[None]], delay: float = 0.3) -> None:
        self.owner, self.send, self.delay = owner, send, delay
        self.value: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> bool:
        return self._timer is not None or self._lock.locked()

    def push(self, value: Any) -> None:
        self.value = value
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        background_tasks.create(self._send(), name="acc-debounce")

    async def _send(self) -> None:
        async with self._lock:
            if self.owner.is_deleted:
                return
            with self.owner:  # notifications need the page's context
                await self.send(self.value)
