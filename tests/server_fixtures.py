"""A real trainer over real HTTP for tests: uvicorn on a free loopback port, in a thread.

Register with `pytest_plugins = ["tests.server_fixtures"]`, then:

    def test_something(live_trainer):
        base_url, token, session = live_trainer        # or live_trainer.client()

    def test_other(trainer_factory, sse):
        trainer = trainer_factory(token="s3cret", tasks=["ReconstructionTask"])
        with sse(trainer) as events:
            hello = events.wait_for("hello")

`run_trainer` is the same as a context manager, for fixtures of other scopes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from acc.engine import EngineConfig
from acc.engine.session import Session
from acc.server.app import create_app, make_server

STARTUP_TIMEOUT_S = 60
TaskSpec = str | dict[str, Any]  # a task type, or add_task's keyword arguments


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LiveTrainer:
    base_url: str
    token: str | None
    session: Session
    app: FastAPI

    def __iter__(self) -> Iterator[Any]:  # `base_url, token, session = trainer`
        return iter((self.base_url, self.token, self.session))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for this trainer (with the token, if any); close it, or use `with`."""
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30, **kwargs)


class EventStream:
    """Server-sent events read from an open streaming response, with a count of the bytes read."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.bytes = 0
        self._events = self._parse()

    def _parse(self) -> Iterator[tuple[str, Any]]:
        kind, data = "message", []
        for line in self.response.iter_lines():
            self.bytes += len(line.encode()) + 1
            if not line:  # a blank line ends an event
                if data:
                    yield kind, json.loads("\n".join(data))
                kind, data = "message", []
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._events

    def wait_for(self, kind: str, predicate: Callable[[Any], bool] = lambda data: True,
                 timeout: float = 10) -> Any:
        """The data of the next `kind` event that satisfies `predicate`; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        for event, data in self._events:
            if event == kind and predicate(data):
                return data
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"no matching {kind!r} event within {timeout} s")


@contextmanager
def open_stream(trainer: LiveTrainer, read_timeout: float = 10, **params: Any) -> Iterator[EventStream]:
    """`GET /api/stream` as an `EventStream` (reads fail after `read_timeout` s of silence)."""
    timeout = httpx.Timeout(10, read=read_timeout)
    with httpx.Client(base_url=trainer.base_url, headers=trainer.headers, timeout=timeout) as client:
        with client.stream("GET", "/api/stream", params=params) as response:
            response.raise_for_status()
            yield EventStream(response)


@contextmanager
def run_trainer(workspace: Path, config: EngineConfig, token: str | None = None,
                tasks: Sequence[TaskSpec] = ("ReconstructionTask",)) -> Iterator[LiveTrainer]:
    """Serve a session over `workspace` with `tasks` added, until the block ends."""
    def open_session() -> Session:
        session = Session.open(workspace, config)
        for spec in tasks:
            options = spec if isinstance(spec, dict) else {"type": spec}
            session.engine.add_task(**options)
        return session

    app = create_app(open_session, token)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from now on: no race with other tests
    server = make_server(app, "127.0.0.1", sock.getsockname()[1], log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-trainer", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:  # uvicorn offers no event to wait on
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test trainer did not start; see the log above")
        time.sleep(0.01)
    try:
        yield LiveTrainer(f"http://127.0.0.1:{sock.getsockname()[1]}", token, app.state.session, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def trainer_factory(workspace, tiny_config):
    """`start(token=None, tasks=("ReconstructionTask",), config=None) -> LiveTrainer` over the test's
    workspace; every trainer started is shut down after the test."""
    threads = torch.get_num_threads()
    # One intra-op thread: the tiny model gains nothing from more, and on a busy shared CPU
    # spinning OpenMP workers slow it down more than tenfold.
    torch.set_num_threads(1)
    with ExitStack() as stack:
        stack.callback(torch.set_num_threads, threads)
        def start(token: str | None = None, tasks: Sequence[TaskSpec] = ("ReconstructionTask",),
                  config: EngineConfig | None = None) -> LiveTrainer:
            return stack.enter_context(run_trainer(workspace.root, config or tiny_config, token, tasks))
        yield start


@pytest.fixture
def sse() -> Callable[..., AbstractContextManager[EventStream]]:
    """`open_stream`, for test modules that do not import this one (importing a plugin module
    from a test module keeps pytest from rewriting its asserts)."""
    return open_stream


@pytest.fixture
def live_trainer(trainer_factory) -> LiveTrainer:
    """A trainer without a token, training nothing yet, with a ReconstructionTask."""
    return trainer_factory()
