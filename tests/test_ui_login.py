"""The dashboard's own token (`acc ui --ui-token`): refused on the network without one, and with one
nothing but the login page until the browser logged in (a real chromium against `acc ui`)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import websockets.sync.client
from nicegui import __version__ as nicegui_version
from playwright.sync_api import expect

from tests.server_fixtures import free_port
from tests.test_browser import WAIT_MS, browser, page, run_dashboard_process  # noqa: F401 (fixtures)

UI_TOKEN = "dashboard-token-0123456789"


def acc_ui(*args: str) -> list[str]:
    return [sys.executable, "-m", "acc", "ui", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "ACC_UI_TOKEN", "ACC_TOKEN")}
    return env | extra


def dashboard_with_login(trainer_url: str, token: str = UI_TOKEN):
    """`acc ui` with `ACC_UI_TOKEN` on loopback; yields its URL once /login answers."""
    return run_dashboard_process(trainer_url, ui_token=token, ready_path="/login")


@pytest.mark.parametrize("args, env, expected", [
    (["--host", "0.0.0.0"], {}, "without a token"),
    (["--host", "0.0.0.0", "--ui-token", "short"], {}, "16 characters"),
    (["--host", "0.0.0.0"], {"ACC_UI_TOKEN": "short"}, "16 characters"),
    # The trainer's token is not the dashboard's: it does not open the dashboard to the network.
    (["--host", "0.0.0.0", "--token", "trainer-token-0123456789"], {}, "without a token"),
])
def test_acc_ui_on_the_network_needs_a_token_of_its_own(args, env, expected):
    result = subprocess.run(acc_ui(*args, "--port", str(free_port())), env=clean_env(**env),
                            capture_output=True, text=True, timeout=120)
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode == 2, output
    assert expected in output and "--ui-token" in output and "ACC_UI_TOKEN" in output, output
    assert "secrets.token_urlsafe(24)" in output


def test_without_logging_in_nothing_but_the_login_page(live_trainer):
    with dashboard_with_login(live_trainer.base_url) as url, httpx.Client(base_url=url, timeout=10) as anonymous:
        # NiceGUI renders its root page for unknown paths too; the page asked for comes back after the login
        for path, location in (("/", "/login"), ("/anything", "/login?next=%2Fanything"),
                               ("/?x=1", "/login?next=%2F%3Fx%3D1"),
                               ("/compare?a=1&b=2", "/login?next=%2Fcompare%3Fa%3D1%26b%3D2")):
            response = anonymous.get(path)
            assert response.status_code == 303 and response.headers["location"] == location, path
        for path in ("/_acc/history/x", "/_acc/static/1/uPlot.min.css", "/_nicegui_ws/socket.io/?EIO=4&transport=polling",
                     f"/_nicegui/{nicegui_version}/static/nicegui.js", "/_nicegui/auto/static/x"):
            response = anonymous.get(path)
            assert response.status_code == 401, (path, response.status_code)
            assert "reconstruction_task" not in response.text
        assert anonymous.post("/", json={}).status_code == 401
        assert "ACC dashboard" in anonymous.get("/login").text
        ws_url = url.replace("http", "ws") + "/_nicegui_ws/socket.io/?EIO=4&transport=websocket"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            websockets.sync.client.connect(ws_url, open_timeout=10)
        assert refused.value.response.status_code == 403
        wrong = anonymous.post("/login", data={"token": UI_TOKEN + "x", "next": "/checkpoints"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        assert 'name="next" value="/checkpoints"' in wrong.text  # the form keeps where to go
        assert anonymous.get("/").status_code == 303  # still out
        form = anonymous.get("/login", params={"next": "/compare?a=1&b=2"}).text
        assert 'name="next" value="/compare?a=1&amp;b=2"' in form
        # `next` never leads off this dashboard
        for elsewhere in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "evil", "/x\r\nSet-Cookie: a=b"):
            assert 'name="next" value="/"' in anonymous.get("/login", params={"next": elsewhere}).text, elsewhere
            assert anonymous.post("/login", data={"token": UI_TOKEN + "x", "next": elsewhere}).status_code == 401

        right = anonymous.post("/login", data={"token": UI_TOKEN, "next": "https://evil.example/"})
        assert right.status_code == 303 and right.headers["location"] == "/"
        assert anonymous.get("/").status_code == 200  # the session cookie now lets it in
        again = anonymous.get("/login", params={"next": "/checkpoints"})  # logged in already: straight there
        assert again.status_code == 303 and again.headers["location"] == "/checkpoints"
        fresh = httpx.Client(base_url=url, timeout=10)
        with fresh:
            bookmarked = fresh.post("/login", data={"token": UI_TOKEN, "next": "/compare?a=1&b=2"})
            assert bookmarked.status_code == 303 and bookmarked.headers["location"] == "/compare?a=1&b=2"
        with websockets.sync.client.connect(ws_url, open_timeout=10,
                                            additional_headers={"Cookie": session_cookie(anonymous)}):
            pass  # accepted


def session_cookie(client: httpx.Client) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def test_the_browser_logs_in_with_the_right_token_only(live_trainer, page):  # noqa: F811 (fixture)
    with dashboard_with_login(live_trainer.base_url) as url:
        page.goto(url)
        expect(page).to_have_url(f"{url}/login", timeout=WAIT_MS)
        token_input = page.locator('[data-role="token"]')
        expect(token_input).to_be_visible(timeout=WAIT_MS)
        assert page.evaluate("() => window.accCharts === undefined")  # no dashboard code was served

        token_input.fill("not-the-token-0123456789")
        page.locator('[data-role="login"]').click()
        expect(page.locator('[data-role="login-error"]')).to_have_text("Wrong token.", timeout=WAIT_MS)
        expect(page).to_have_url(f"{url}/login")
        page.goto(url)  # still asked to log in
        expect(page).to_have_url(f"{url}/login", timeout=WAIT_MS)

        page.locator('[data-role="token"]').fill(UI_TOKEN)
        page.locator('[data-role="login"]').click()
        expect(page).to_have_url(f"{url}/", timeout=WAIT_MS)
        # The dashboard, live over its websocket: the trainer's task row arrives after the page loads.
        expect(page.locator('[data-task="reconstruction_task"]')).to_be_visible(timeout=WAIT_MS)
        page.wait_for_function("() => window.accCharts !== undefined", timeout=WAIT_MS)
        page.reload()  # the login lasts: the session cookie
        expect(page.locator('[data-task="reconstruction_task"]')).to_be_visible(timeout=WAIT_MS)
        expect(page).to_have_url(f"{url}/")


def test_a_bookmarked_page_opens_after_the_login(live_trainer, page):  # noqa: F811 (fixture)
    with dashboard_with_login(live_trainer.base_url) as url:
        page.goto(f"{url}/checkpoints")
        expect(page).to_have_url(f"{url}/login?next=%2Fcheckpoints", timeout=WAIT_MS)
        page.locator('[data-role="token"]').fill(UI_TOKEN)
        page.locator('[data-role="login"]').click()
        expect(page).to_have_url(f"{url}/checkpoints", timeout=WAIT_MS)
        expect(page.locator('[data-role="checkpoint-tree"]')).to_be_visible(timeout=WAIT_MS)

