"""Fan-out of engine and registry events to the server-sent-event clients of `GET /api/stream`.

One `Broadcaster` subscribes once to the engine and to the three registries. Their callbacks run
on the engine and watcher threads and only hand off: the event joins a pending list under a
lock and the event loop is woken with `call_soon_threadsafe`. On the loop:

- metric points are sent at most every `interval` seconds as one `metrics` event
  (`MetricsBatch`: steps and values column-wise), so a client's traffic does not grow with the
  step rate; any other event is sent at once, after the points that came before it, so clients
  see events in the order the engine made them;
- each client has its own bounded queue; a client too slow to keep up loses its oldest metric
  batches (it can re-read them from `GET /api/metrics`), never the other events, unless the
  queue holds nothing else. A client's queue goes when its stream ends, and `close()` ends
  every stream (on shutdown, so that no open stream holds the server up).

Event names: `hello` (the state, first), `metrics`, `state`, `eval`, `error`, `registry`, `job`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from acc.engine.session import Session
from acc.registry import Registry
from acc.registry import RegistryChange as Change
from acc.server.schemas import MetricsBatch, RegistryChange

Event = tuple[str, dict[str, Any]]  # (event name, JSON data)


class Client:
    """One stream's queue: bounded, dropping the oldest metric batch first when full."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.events: deque[Event | None] = deque()  # None: the stream ends
        self.ready = asyncio.Event()

    def put(self, event: Event | None) -> None:
        if len(self.events) >= self.bound:
            oldest = next((e for e in self.events if e is not None and e[0] == "metrics"), None)
            if oldest is None:
                self.events.popleft()
            else:
                self.events.remove(oldest)
        self.events.append(event)
        self.ready.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            await self.ready.wait()
            event = self.events.popleft()
            if not self.events:
                self.ready.clear()
            if event is None:
                return
            yield event


class Broadcaster:
    def __init__(self, interval: float = 0.2, bound: int = 200) -> None:
        self.interval, self.bound = interval, bound
        self.clients: set[Client] = set()
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Event] = []  # in the order the threads made them
        self._lock = threading.Lock()
        self._unsubscribe: list[Callable[[], None]] = []

    # ---- wiring (on the loop) ----------------------------------------------------------------
    def attach(self, session: Session) -> None:
        """Subscribe to the session's engine and registries; events go to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._unsubscribe.append(session.engine.subscribe(self._on_engine_event))
        for registry in (session.tasks, session.generators, session.recipes):
            self._unsubscribe.append(registry.subscribe(self._registry_callback(registry)))
        self._unsubscribe.append(session.jobs.subscribe(lambda job: self._hand_off(("job", job.public()))))
        self._unsubscribe.append(session.datasets.subscribe(lambda change: self._hand_off(("dataset", change))))
        self._unsubscribe.append(session.factoring.subscribe(lambda change: self._hand_off(("factoring", change))))

    def close(self) -> None:
        """Unsubscribe and end every client's stream; idempotent."""
        if self.closed:
            return
        self.closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for client in self.clients:
            client.put(None)

    def connect(self) -> Client:
        client = Client(self.bound)
        if self.closed:
            client.put(None)
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    # ---- other threads: hand off only --------------------------------------------------------
    def _on_engine_event(self, event: dict[str, Any]) -> None:
        self._hand_off((event["type"], {k: v for k, v in event.items() if k != "type"}))

    def _registry_callback(self, registry: Registry) -> Callable[[Change], None]:
        def on_change(change: Change) -> None:
            self._hand_off(("registry", RegistryChange(kind=registry.kind, **asdict(change)).model_dump()))
        return on_change

    def _hand_off(self, event: Event) -> None:
        if self.closed:
            return
        with self._lock:
            self._pending.append(event)
            first = len(self._pending) == 1
        if event[0] != "metrics":
            self._loop.call_soon_threadsafe(self._drain)
        elif first:  # one timer per batch of steps, not one per step
            self._loop.call_soon_threadsafe(self._loop.call_later, self.interval, self._drain)

    # ---- the loop ----------------------------------------------------------------------------
    def _drain(self) -> None:
        """Send what is pending, in order, consecutive metric points merged into one batch."""
        with self._lock:
            pending, self._pending = self._pending, []
        points: list[dict[str, Any]] = []
        for kind, data in pending:
            if kind == "metrics":
                points.append(data)
                continue
            self._send_metrics(points)
            points = []
            self._fan_out((kind, data))
        self._send_metrics(points)

    def _send_metrics(self, points: list[dict[str, Any]]) -> None:
        if not points:
            return
        keys = sorted({key for point in points for key in point["values"]})
        batch = MetricsBatch(step=[p["step"] for p in points],
                             values={key: [p["values"].get(key) for p in points] for key in keys})
        self._fan_out(("metrics", batch.model_dump()))

    def _fan_out(self, event: Event) -> None:
        if not self.closed:
            for client in self.clients:
                client.put(event)
