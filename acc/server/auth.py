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


MIN_TOKEN_LENGTH = 16  # a guess per request over the network: 16 random characters are out of reach
MAKE_TOKEN = 'python3 -c "import secrets; print(secrets.token_urlsafe(24))"'


def check_bind(host: str, token: str | None, *, what: str = "trainer", option: str = "--token",
               env: str = "ACC_TOKEN") -> None:
    """Refuse to serve beyond this machine without a token, or with one short enough to guess.

    `what` is the service (the trainer, the dashboard), `option` and `env` where its token comes from:
    they go into the message, with the command that makes a good token."""
    if token and not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError(f"the {what}'s token ({option} / {env}) may hold only visible ASCII characters (no "
                         f"spaces): it is sent in an HTTP header. Make one with: {MAKE_TOKEN}")
    if is_loopback(host):
        return
    if not token:
        raise ValueError(
            f"refusing to listen on {host!r} without a token: anyone who can reach it could drive the {what}. "
            f"Pass {option} (or set {env}), or bind 127.0.0.1 and tunnel (ssh -L). Make a token with: {MAKE_TOKEN}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"refusing to listen on {host!r} with a {len(token)}-character {what} token ({option} / {env}): a "
            f"token reachable from the network needs at least {MIN_TOKEN_LENGTH} characters to resist guessing. "
            f"Make one with: {MAKE_TOKEN}")


class TokenAuth:
    """401 with `WWW-Authenticate: Bearer` for any HTTP request without the right token. The scheme
    name is case-insensitive (RFC 7235: `bearer`, `BEARER`); the token is compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        credentials = bearer_credentials(dict(scope["headers"]).get(b"authorization", b""))
        if credentials is not None and hmac.compare_digest(credentials, self.token):
            return True
        if scope["path"] == STREAM_PATH:
            tokens = parse_qs(scope["query_string"].decode("latin-1")).get("token", [])
            return len(tokens) == 1 and hmac.compare_digest(tokens[0].encode(), self.token)
        return False


def bearer_credentials(header: bytes) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header value (any case of `Bearer`, as RFC 7235
    has it), or None for another scheme or none."""
    scheme, space, credentials = header.partition(b" ")
    if not space or scheme.lower() != b"bearer":
        return None
    return credentials.strip(b" \t")


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
