"""The trainer service: `create_app` builds the FastAPI app, `serve` runs it with uvicorn.

The app's lifespan opens the session (store, registries with their file watchers, engine
thread) before the first request and closes it after the last, so the engine's final metrics
reach the store before the process exits. The CLI's `acc trainer` calls `serve`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import acc
from acc.engine import EngineConfig
from acc.engine.distributed import Ranks
from acc.engine.session import Session
from acc.server.auth import TokenAuth, check_bind, redact_tokens
from acc.server import datasets, devices, factoring, model
from acc.server.routes import router
from acc.server.stream import Broadcaster

GRACEFUL_SHUTDOWN_S = 2  # longest a request in flight may delay shutdown (SIGTERM must end us in 5 s)


def _describe(error: dict) -> str:
    if error["type"] == "json_invalid":  # its loc is ("body", character position)
        return f"body is not valid JSON: {error['ctx']['error']} at character {error['loc'][-1]}"
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable `detail` string, the shape of every other error of the API."""
    detail = "; ".join(_describe(e) for e in exc.errors())
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def create_app(open_session: Callable[[], Session], token: str | None = None) -> FastAPI:
    """The API over the session that `open_session()` returns when the app starts.

    With a `token`, every request needs `Authorization: Bearer <token>` (see `acc.server.auth`)."""
    broadcaster = Broadcaster()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = open_session()
        try:
            app.state.session = session
            broadcaster.attach(session)
            yield
        finally:
            broadcaster.close()
            session.close()

    app = FastAPI(title="ACC trainer", version=acc.__version__, lifespan=lifespan,
                  exception_handlers={RequestValidationError: _validation_error})
    app.state.broadcaster = broadcaster
    app.include_router(router)
    app.include_router(datasets.router)
    app.include_router(factoring.router)
    app.include_router(model.router)
    app.include_router(devices.router)
    if token:
        app.add_middleware(TokenAuth, token=token)
    return app


class Server(uvicorn.Server):
    """uvicorn that ends the event streams first when it shuts down: an open stream would
    otherwise hold the graceful shutdown until its timeout."""

    def __init__(self, config: uvicorn.Config, broadcaster: Broadcaster) -> None:
        super().__init__(config)
        self.broadcaster = broadcaster

    async def shutdown(self, sockets=None) -> None:
        self.broadcaster.close()
        await super().shutdown(sockets)


def make_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> Server:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    redact_tokens(logging.getLogger("uvicorn.access"))  # after Config, which sets up uvicorn's logging
    return Server(config, app.state.broadcaster)


def open_reporting(workspace: str | Path | None, config: EngineConfig | None, restore: bool,
                   ranks: Ranks | None = None) -> Session:
    """Open the session and say, in the server's log, which runs had crashed and what it continues."""
    session = Session.open(workspace, config, restore=restore, ranks=ranks)
    for line in session.engine.start_report():
        logging.getLogger("uvicorn.error").info(line)
    return session


def serve(host: str = "127.0.0.1", port: int = 8765, workspace: str | Path | None = None,
          token: str | None = None, config: EngineConfig | None = None, restore: bool = True,
          ranks: Ranks | None = None) -> None:
    """Run the trainer until SIGINT/SIGTERM, continuing the workspace's last run unless not
    `restore`. The token defaults to `ACC_TOKEN`; binding anything but loopback without one
    raises ValueError."""
    token = token or os.environ.get("ACC_TOKEN") or None
    check_bind(host, token)
    app = create_app(partial(open_reporting, workspace, config, restore, ranks), token)
    make_server(app, host, port).run()
