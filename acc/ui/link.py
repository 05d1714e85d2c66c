"""The dashboard process's one connection to the trainer.

One background thread reads the trainer's event stream (`TrainerClient.stream`) and keeps the
latest state; when the trainer is down or rejects the token it says so (`Link.connection`) and
tries again with exponential backoff. Open pages never talk to the stream: each polls
`events_since(cursor)` from its own timer, so a slow or closed tab cannot hold up the others, and
a burst of events reaches a page as one batch. Actions (add a task, pause...) go straight through
`Link.client` from the page, in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from acc.ui.client import TrainerClient, TrainerError, TrainerUnavailable

log = logging.getLogger(__name__)

RING = 20_000  # events kept for pages that fall behind; further behind, a page reloads
MIN_DELAY, MAX_DELAY = 0.5, 15.0  # reconnect backoff, seconds


@dataclass(frozen=True)
class Connection:
    """How the link stands; a new object on every change, so pages compare by identity."""

    status: Literal["connecting", "connected", "unreachable", "unauthorized", "error"]
    message: str = ""
    retry_at: float | None = None  # time.monotonic() of the next attempt


class Link:
    """Reads the trainer's events in a thread; pages pull what is new with `events_since`."""

    def __init__(self, trainer_url: str, token: str | None = None) -> None:
        self.url = trainer_url.rstrip("/")
        self.client = TrainerClient(self.url, token, timeout=15.0)
        self._stream_client = TrainerClient(self.url, token)  # its own pool: the stream holds a connection
        self.connection = Connection("connecting", f"connecting to {self.url}")
        self.state: dict[str, Any] | None = None
        self.keys: frozenset[str] = frozenset()  # metric keys of the trainer's run: pages draw their charts at once
        self.generation = 0  # bumped on every (re)connection: pages then reload what they show
        self._events: deque[dict] = deque(maxlen=RING)
        self._seq = 0  # sequence number of the last event in _events
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="acc-ui-link", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop reading. A read blocked on the stream cannot be interrupted from here: the daemon
        thread then ends at the next keep-alive, or when the trainer closes the stream."""
        self._stop.set()
        self._wake.set()
        self._stream_client.close()
        if self._thread is not None:
            self._thread.join(timeout=0.5)
        self.client.close()

    def retry_now(self) -> None:
        """Skip the rest of the backoff wait (the banner's "retry now")."""
        self._wake.set()

    # ---- what pages read -------------------------------------------------------------------------
    def events_since(self, cursor: int) -> tuple[int, list[dict], bool]:
        """Events after sequence number `cursor`: (new cursor, events, complete). `complete` is
        False when older events were dropped before the page read them: it should reload."""
        with self._lock:
            first = self._seq - len(self._events) + 1
            if cursor >= self._seq:
                return self._seq, [], True
            skip = max(0, cursor + 1 - first)
            return self._seq, [self._events[i] for i in range(skip, len(self._events))], cursor + 1 >= first

    @property
    def cursor(self) -> int:
        return self._seq

    # ---- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = MIN_DELAY
        while not self._stop.is_set():
            try:
                self._connect_and_listen()
                raise TrainerUnavailable(self.url, "it closed the event stream")
            except Exception as e:  # whatever went wrong, the dashboard stays up and tries again
                if self._stop.is_set():
                    return
                if self.connection.status == "connected":  # it was up: start the backoff afresh
                    delay = MIN_DELAY
                self.connection = self._failure(e, time.monotonic() + delay)
            self._wake.wait(delay)
            self._wake.clear()
            delay = min(delay * 2, MAX_DELAY)

    def _failure(self, e: Exception, retry_at: float) -> Connection:
        if isinstance(e, TrainerUnavailable):
            return Connection("unreachable", str(e.detail), retry_at)
        if isinstance(e, TrainerError) and e.status in (401, 403):
            return Connection("unauthorized", f"the trainer at {self.url} rejected the token ({e.status})", retry_at)
        if isinstance(e, TrainerError):
            return Connection("error", f"the trainer at {self.url} answered {e.status}: {e.detail}", retry_at)
        log.exception("trainer link failed")  # a malformed event, a bug
        return Connection("error", f"lost the trainer at {self.url}: {type(e).__name__}: {e}", retry_at)

    def _connect_and_listen(self) -> None:
        state = self._stream_client.state()
        self.keys = frozenset(self._stream_client.metrics(max_points=3))
        with self._lock:
            self.state = state
            self.generation += 1
        self.connection = Connection("connected")
        for event in self._stream_client.stream(stop=self._stop):
            self._receive(event)

    def _learn_keys(self, data: dict) -> None:
        keys = set(data["values"]) if "values" in data else {
            f"eval/{task}/{metric}" for task, metrics in data["results"].items() for metric in metrics}
        if not keys <= self.keys:
            self.keys = self.keys | keys  # a new set, never changed in place: pages read it from another thread

    def _receive(self, event: dict) -> None:
        kind, data = event["event"], event["data"]
        if kind == "hello":  # the state, as the stream starts
            self.state = data
        elif kind == "state":  # status, tasks, a checkpoint... changed: the event says what, not how it is now
            state = self._stream_client.state()
            if self.state is None or state["run_id"] != self.state["run_id"]:
                self.keys = frozenset(self._stream_client.metrics(max_points=3))
            self.state = state
        elif kind == "metrics" and self.state is not None:
            self.state = {**self.state, **_progress(data)}
        if kind in ("metrics", "eval"):
            self._learn_keys(data)
        with self._lock:
            self._seq += 1
            self._events.append({"event": kind, "data": data, "seq": self._seq})


def metric_points(data: dict) -> list[tuple[int, dict[str, float]]]:
    """(step, {key: value}) per step of a `metrics` event (its columns hold null where a step did
    not log a key)."""
    columns = data.get("values", {})
    return [(step, {key: column[i] for key, column in columns.items() if column[i] is not None})
            for i, step in enumerate(data.get("step", []))]


def _progress(data: dict) -> dict[str, Any]:
    """Step and throughput of the newest point of a `metrics` event, for the status bar."""
    points = metric_points(data)
    if not points:
        return {}
    step, values = points[-1]
    return {"step": step} | ({"samples_per_s": values["samples_per_s"]} if "samples_per_s" in values else {})
