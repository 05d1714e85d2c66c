"""Who may use the trainer, and what bad requests do: refused with a reason, changing nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest

from acc.server.app import serve
from acc.server.auth import MAKE_TOKEN, MIN_TOKEN_LENGTH, bearer_credentials, check_bind, redact_tokens


TOKEN = "s3cret-token-for-tests"  # long enough for a network bind (16 characters or more)

# (method, path, request keyword arguments, expected status)
BAD_REQUESTS = [
    ("POST", "/api/tasks", {"json": {"type": "NoSuchTask"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "../../etc/passwd"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ReconstructionTask"}}, 409),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "name": "reconstruction_task"}}, 409),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "name": "../x"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "name": "a/b"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "name": "."}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "name": ".."}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "weight": -1}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "weight": 1e9}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "weight": "heavy"}}, 422),
    ("POST", "/api/tasks", {"content": b'{"type": "ClassificationTask", "weight": NaN}'}, 422),
    ("POST", "/api/tasks", {"content": b'{"type": "ClassificationTask", "weight": Infinity}'}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "latent": "nope"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "dataset": "nope"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "isolation": "leaky"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "colour": "red"}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "params": {"bogus": 1}}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "ClassificationTask", "params": {"out_dim": 10 ** 9}}}, 422),
    ("POST", "/api/tasks", {"json": {"type": "RegressionTask", "name": "r"}}, 422),  # needs params.target
    ("POST", "/api/tasks", {"content": b'{"type": '}, 422),
    ("POST", "/api/tasks", {"json": ["ReconstructionTask"]}, 422),
    ("POST", "/api/tasks", {}, 422),
    ("PATCH", "/api/tasks/reconstruction_task", {"json": {"weight": -0.5}}, 422),
    ("PATCH", "/api/tasks/reconstruction_task", {"json": {"weight": 1e308}}, 422),
    ("PATCH", "/api/tasks/reconstruction_task", {"content": b'{"weight": NaN}'}, 422),
    ("PATCH", "/api/tasks/reconstruction_task", {"json": {"enabled": "maybe"}}, 422),
    ("PATCH", "/api/tasks/reconstruction_task", {"json": {"weight": 1, "colour": "red"}}, 422),
    ("PATCH", "/api/tasks/nope", {"json": {"weight": 1}}, 404),
    ("PATCH", "/api/tasks/a b", {"json": {"weight": 1}}, 422),
    ("PATCH", "/api/tasks/a/b", {"json": {"weight": 1}}, 404),
    ("DELETE", "/api/tasks/nope", {}, 404),
    ("DELETE", "/api/tasks/a/b", {}, 404),
    ("DELETE", "/api/tasks/%2E%2E%2Fx", {}, 404),
    ("POST", "/api/train", {"json": {"action": "jump"}}, 422),
    ("POST", "/api/train", {"json": {"action": "start", "steps": 0}}, 422),
    ("POST", "/api/train", {"json": {"action": "start", "steps": 10 ** 12}}, 422),
    ("POST", "/api/train", {"json": {"action": "start", "steps": "ten"}}, 422),
    ("POST", "/api/train", {"json": {"action": "pause", "steps": 5}}, 422),
    ("GET", "/api/registry/models", {}, 422),
    ("GET", "/api/metrics", {"params": {"max_points": 2}}, 422),
    ("GET", "/api/metrics", {"params": {"max_points": 10 ** 6}}, 422),
    ("GET", "/api/metrics", {"params": {"since": -1}}, 422),
    ("GET", "/api/metrics", {"params": {"until": 2 ** 70}}, 422),
    ("GET", "/api/metrics", {"params": {"run": "latest"}}, 422),
    ("GET", "/api/metrics", {"params": {"run": 12345}}, 404),
    ("GET", "/api/evals", {"params": {"limit": 0}}, 422),
    ("GET", "/api/images/reconstructions.png", {"params": {"n": 65}}, 422),
    ("GET", "/api/images/reconstructions.png", {"params": {"n": "all"}}, 422),
    ("POST", "/api/checkpoints", {"json": {"name": "../x"}}, 422),
    ("POST", "/api/checkpoints", {"json": {"name": ".."}}, 422),
    ("PUT", "/api/lr", {"json": {"lr": True}}, 422),
    ("POST", "/api/train", {"json": {"action": "start", "steps": True}}, 422),
    ("POST", "/api/checkpoints/no-such-checkpoint/load", {}, 404),
    ("PUT", "/api/state", {}, 405),
    ("GET", "/api/nope", {}, 404),
]


def test_bad_requests_are_refused_and_change_nothing(live_trainer):
    with live_trainer.client() as client:
        client.post("/api/tasks", json={"type": "ClassificationTask", "name": "digit", "latent": "digit"})
        before = client.get("/api/state").json()
        for method, path, kwargs, expected in BAD_REQUESTS:
            if "content" in kwargs:
                kwargs = {**kwargs, "headers": {"Content-Type": "application/json"}}
            response = client.request(method, path, **kwargs)
            case = f"{method} {path} {kwargs}"
            assert response.status_code == expected, f"{case}: {response.status_code} {response.text}"
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail, f"{case}: {response.text}"
            assert client.get("/api/state").json() == before, f"{case} changed the state"


def test_errors_say_what_was_wrong(live_trainer):
    with live_trainer.client() as client:
        assert "NoSuchTask" in client.post("/api/tasks", json={"type": "NoSuchTask"}).json()["detail"]
        assert "weight" in client.patch("/api/tasks/reconstruction_task", json={"weight": -1}).json()["detail"]
        assert "already exists" in client.post("/api/tasks", json={"type": "ReconstructionTask"}).json()["detail"]
        assert "latent" in client.post("/api/tasks", json={"type": "ClassificationTask", "latent": "x"}).json()["detail"]


# ---- binding and tokens ------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_token(host):
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com"])
def test_other_hosts_need_a_token(host):
    with pytest.raises(ValueError, match="without a token"):
        check_bind(host, None)
    with pytest.raises(ValueError):
        check_bind(host, "")
    check_bind(host, TOKEN)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_a_network_token_must_resist_guessing(host):
    for short in ("s3cret", "x" * (MIN_TOKEN_LENGTH - 1)):
        with pytest.raises(ValueError, match=f"at least {MIN_TOKEN_LENGTH} characters") as error:
            check_bind(host, short)
        assert MAKE_TOKEN in str(error.value) and "--token" in str(error.value)
    check_bind(host, "x" * MIN_TOKEN_LENGTH)
    check_bind("127.0.0.1", "s3cret")  # on loopback a token is the user's own business


def test_the_messages_name_the_service_and_its_option():
    for token, match in ((None, "without a token"), ("short", "16 characters")):
        with pytest.raises(ValueError, match=match) as error:
            check_bind("0.0.0.0", token, what="dashboard", option="--ui-token", env="ACC_UI_TOKEN")
        message = str(error.value)
        assert "dashboard" in message and "--ui-token" in message and "ACC_UI_TOKEN" in message
        assert "secrets.token_urlsafe(24)" in message


@pytest.mark.parametrize("token", ["with space-1234567890", "tab\there-1234567890", "ünïcode-1234567890"])
def test_a_token_must_fit_an_http_header(token):
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(ValueError, match="visible ASCII"):
            check_bind(host, token)


def test_serve_refuses_before_opening_anything(tmp_path, monkeypatch):
    monkeypatch.delenv("ACC_TOKEN", raising=False)
    with pytest.raises(ValueError, match="--token"):
        serve("0.0.0.0", 0, tmp_path / "ws")
    with pytest.raises(ValueError, match="16 characters"):
        serve("0.0.0.0", 0, tmp_path / "ws", token="s3cret")
    assert not (tmp_path / "ws").exists()


def test_acc_trainer_refuses_a_short_token_with_how_to_make_one(tmp_path):
    result = subprocess.run([sys.executable, "-m", "acc", "trainer", "--host", "0.0.0.0", "--token", "s3cret",
                             "--workspace", str(tmp_path / "ws")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "16 characters" in output and "secrets.token_urlsafe(24)" in output
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("header, token", [
    (b"Bearer abc", b"abc"), (b"bearer abc", b"abc"), (b"BEARER abc", b"abc"), (b"bEaReR  abc ", b"abc"),
    (b"Basic abc", None), (b"Bearer", None), (b"Bearerabc", None), (b"", None), (b"abc", None),
])
def test_the_bearer_scheme_is_case_insensitive(header, token):
    assert bearer_credentials(header) == token


def test_any_case_of_bearer_is_accepted_over_http(trainer_factory):
    trainer = trainer_factory(token=TOKEN)
    with httpx.Client(base_url=trainer.base_url) as http:
        for scheme in ("Bearer", "bearer", "BEARER", "beaRer"):
            response = http.get("/api/state", headers={"authorization": f"{scheme} {TOKEN}"})
            assert response.status_code == 200, (scheme, response.text)
        for header in (f"bearer {TOKEN}x", f"bearer {TOKEN[:-1]}", f"Basic {TOKEN}", f"bearer{TOKEN}", "bearer"):
            assert http.get("/api/state", headers={"authorization": header}).status_code == 401, header


def test_token_guards_everything(trainer_factory, sse):
    trainer = trainer_factory(token=TOKEN)
    with trainer.client() as good, httpx.Client(base_url=trainer.base_url) as anonymous:
        before = good.get("/api/state").json()
        for path in ("/api/health", "/api/state", "/api/registry/tasks", "/openapi.json", "/docs", "/api/nope"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]
            wrong = anonymous.get(path, headers={"Authorization": f"Bearer {TOKEN}x"})
            assert wrong.status_code == 401, path
        assert anonymous.get("/api/state", headers={"Authorization": TOKEN}).status_code == 401  # no scheme
        assert anonymous.get("/api/state", params={"token": TOKEN}).status_code == 401  # query: stream only
        assert anonymous.post("/api/train", json={"action": "start"}).status_code == 401
        assert anonymous.post("/api/tasks", json={"type": "ClassificationTask"}).status_code == 401

        assert good.get("/api/health").json()["ok"] is True
        assert good.get("/openapi.json").status_code == 200
        assert good.get("/api/state").json() == before
        assert anonymous.get("/api/stream", params={"token": "wrong"}).status_code == 401
    with sse(replace(trainer, token=None), token=TOKEN) as events:  # EventSource cannot send headers
        assert events.wait_for("hello")["step"] == before["step"]


def test_no_cross_origin_access(live_trainer):
    evil = "http://evil.example"
    with live_trainer.client() as client:
        preflight = client.options("/api/train", headers={
            "Origin": evil, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code >= 400
        assert "access-control-allow-origin" not in preflight.headers
        simple = client.get("/api/state", headers={"Origin": evil})
        assert "access-control-allow-origin" not in simple.headers


def test_tokens_in_query_strings_are_not_logged():
    logger = logging.getLogger("test.access")
    redact_tokens(logger)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, '%s "%s %s"', (
        "127.0.0.1:5555", "GET", f"/api/stream?x=1&token={TOKEN}"), None)
    for f in logger.filters:
        f.filter(record)
    assert TOKEN not in record.getMessage() and "token=***" in record.getMessage()
