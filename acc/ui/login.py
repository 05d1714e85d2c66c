"""The dashboard's login: with a token of its own (`acc ui --ui-token`), nothing is served before it.

The dashboard holds the trainer's token and drives the trainer, so with a token (required for any
bind but loopback, `acc.server.auth.check_bind`) every request needs a session that logged in:
`LoginGate`, a plain ASGI middleware, sits in front of every route NiceGUI has: the pages (and the
404 handler, which renders the root page too), `/_nicegui/...` (assets and client routes), the
socket.io websocket and its polling fallback under `/_nicegui_ws/`, and our own `/_acc/...`. Only
`/login` and `/favicon.ico` are public. A page asks to log in (303 to `/login?next=<the page>`, so
that a bookmarked or shared page opens after the login); anything else gets 401, and a websocket is
closed before it is accepted. `next` is followed only to a path of this dashboard, never to another site.

`/login` is a plain HTML form, not a NiceGUI page: a visitor who has not logged in gets no NiceGUI
client and no websocket at all. The token is compared in constant time; a login marks the session,
which lives in the signed session cookie NiceGUI's `storage_secret` sets up (`app.storage.browser`):
it is readable in a websocket's scope as well, where `app.storage.user` is not. The secret is derived
from the token, so a new token logs every browser out.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

LOGIN_PATH = "/login"
PUBLIC_PATHS = frozenset({LOGIN_PATH, "/favicon.ico"})
SESSION_KEY = "acc_logged_in"
COOKIE = "acc_ui_session"
SESSION_DAYS = 7
MAX_FORM_BYTES = 4096

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ACC · log in</title><style>
body {{ font-family: Roboto, -apple-system, "Helvetica Neue", Arial, sans-serif; background: #eceff1; margin: 0; }}
main {{ max-width: 22rem; margin: 18vh auto; background: white; padding: 1.5rem 2rem; border-radius: 4px;
        box-shadow: 0 1px 5px rgba(0,0,0,.2); }}
h1 {{ font-size: 1.25rem; font-weight: 500; margin: 0 0 1rem; }}
label {{ display: block; font-size: .875rem; color: #555; margin-bottom: .25rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; margin-bottom: 1rem; }}
button {{ background: #263238; color: white; border: 0; padding: .5rem 1.25rem; font-size: .9rem; border-radius: 3px; }}
.error {{ color: #c10015; font-size: .875rem; margin: 0 0 1rem; }}
.note {{ color: #757575; font-size: .75rem; margin-top: 1rem; }}
</style></head><body><main>
<h1>ACC dashboard</h1>
{error}<form method="post" action="login">
<input type="hidden" name="next" value="{next}">
<label for="token">Dashboard token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required data-role="token">
<button type="submit" data-role="login">Log in</button>
</form>
<p class="note">The token the dashboard was started with (<code>--ui-token</code> or <code>ACC_UI_TOKEN</code>).</p>
</main></body></html>
"""


def storage_secret(token: str) -> str:
    """The key that signs the session cookie: derived from the token, so a new token ends old logins."""
    return hmac.new(token.encode(), b"acc ui session cookie", hashlib.sha256).hexdigest()


def session_middleware_kwargs() -> dict:
    return {"session_cookie": COOKIE, "same_site": "lax", "max_age": SESSION_DAYS * 24 * 3600}


def local_path(target: str) -> str:
    """`target` if it is a path on this dashboard (what `next` may name), else "/"."""
    parts = urlsplit(target)
    if (not target.startswith("/") or target.startswith("//") or "\\" in target or parts.scheme or parts.netloc
            or any(ord(ch) < 32 for ch in target)):
        return "/"
    return target


def logged_in(scope: Scope) -> bool:
    session = scope.get("session")  # set by the SessionMiddleware that storage_secret installs; none: refused
    return isinstance(session, dict) and session.get(SESSION_KEY) is True


class LoginGate:
    """Nothing but `/login` (and the favicon) for an HTTP request or websocket without a logged-in session."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS or logged_in(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accepting: a 403 to the handshake
            return
        response: Response
        if scope["method"] in ("GET", "HEAD") and not scope["path"].startswith("/_"):  # a page: ask to log in
            page = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            target = LOGIN_PATH if page == "/" else f"{LOGIN_PATH}?next={quote(page, safe='')}"
            response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
        else:
            response = PlainTextResponse("log in first, at /login", status_code=401)
        await response(scope, receive, send)


def _page(error: str = "", status_code: int = 200, next_page: str = "/") -> HTMLResponse:
    block = f'<p class="error" data-role="login-error">{html.escape(error)}</p>\n' if error else ""
    return HTMLResponse(PAGE.format(error=block, next=html.escape(local_path(next_page))), status_code=status_code,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def install_login(app: FastAPI, token: str) -> None:
    """Add `/login` and the gate to NiceGUI's `app`; call before `ui.run`, which must get
    `storage_secret=storage_secret(token)` and `session_middleware_kwargs=session_middleware_kwargs()`
    (its SessionMiddleware is then added after, so outside, the gate: the gate sees the session)."""
    expected = token.encode()

    async def login_form(request: Request) -> Response:
        next_page = local_path(request.query_params.get("next", "/"))
        if logged_in(request.scope):
            return RedirectResponse(next_page, status_code=303)
        return _page(next_page=next_page)

    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return _page("That is far too long for a token.", 413)
        form = parse_qs(body.decode("latin-1"))
        given, next_page = form.get("token", [""])[0], local_path(form.get("next", ["/"])[0])
        if not hmac.compare_digest(given.encode(), expected):
            return _page("Wrong token.", 401, next_page)
        request.session.clear()  # a fresh session: none chosen before the login carries over
        request.session[SESSION_KEY] = True
        return RedirectResponse(next_page, status_code=303)

    app.add_api_route(LOGIN_PATH, login_form, methods=["GET"], include_in_schema=False)
    app.add_api_route(LOGIN_PATH, login, methods=["POST"], include_in_schema=False)
    app.add_middleware(LoginGate)
