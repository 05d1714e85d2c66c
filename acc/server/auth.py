"""Who may talk to the trainer: loopback only, unless a bearer token guards every request.

The token is checked by an ASGI middleware rather than a route dependency so that nothing is
left open by accident: `/openapi.json`, `/docs`, unknown paths and every `/api` route all need
`Authorization: Bearer <token>`. The one exception is `GET /api/stream`, which also accepts
`?token=`: a browser's `EventSource` cannot set request headers. Query strings end up in access
logs, so `redact_tokens` is installed on uvicorn's access logger.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from urllib.parse import parse_qs

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

STREAM_PATH = "/api/stream"


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host!r} without a token: anyone who can reach it could drive the "
            "trainer. Pass --token (or set ACC_TOKEN), or bind 127.0.0.1 and tunnel (ssh -L).")


class TokenAuth:
    """401 with `WWW-Authenticate: Bearer` for any HTTP request without the right token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(header, self.expected):
            return True
        if scope["path"] == STREAM_PATH:
            tokens = parse_qs(scope["query_string"].decode("latin-1")).get("token", [])
            return len(tokens) == 1 and hmac.compare_digest(tokens[0].encode(), self.token)
        return False


class _RedactTokens(logging.Filter):
    pattern = re.compile(r"(token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_tokens(logger: logging.Logger) -> None:
    """Hide `token=` query values in `logger`'s records (uvicorn logs request paths with queries)."""
    if not any(isinstance(f, _RedactTokens) for f in logger.filters):
        logger.addFilter(_RedactTokens())
