"""The HTTP API over a real server: every endpoint's happy path, the event stream, shutdown."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import fastapi.routing
import httpx
import pytest
import torch
from fastapi import HTTPException
from PIL import Image

import acc
from acc.datasets import Dataset
from acc.mnist import load_mnist
from acc.server.images import GAP, SCALE
from acc.server.routes import engine_errors
from acc.server.stream import Client
from acc.store import Store
from tests.conftest import TINY_MODEL, write_user_tasks


REPO = Path(__file__).resolve().parents[1]

DUMMY_TASK = '''
import torch.nn.functional as F
from acc.tasks.base import Task

class DummyTask(Task):
    """Predict mean pixel intensity from the whole latent."""
    def loss(self, out, batch):
        pred = self.head(self.features(out)).squeeze(-1)
        return F.mse_loss(pred, batch["image"].mean(dim=(1, 2, 3)))
'''

FAILING_TASK = '''
from acc.tasks.base import Task

class FailingTask(Task):
    """Raises on its first step."""
    def loss(self, out, batch):
        raise RuntimeError("boom from user code")
'''


def wait_state(client: httpx.Client, predicate, timeout: float = 30) -> dict:
    """Poll `GET /api/state` until `predicate(state)`; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.get("/api/state").json()
        if predicate(state):
            return state
        assert time.monotonic() < deadline, f"state never matched; last: {state}"
        time.sleep(0.05)  # a poll interval, not a synchronisation


def train(client: httpx.Client, steps: int) -> dict:
    """Train `steps` more steps and wait until they are done."""
    target = client.get("/api/state").json()["step"] + steps
    assert client.post("/api/train", json={"action": "start", "steps": steps}).status_code == 200
    return wait_state(client, lambda s: s["status"] == "idle" and s["step"] == target)


@pytest.fixture
def client(live_trainer):
    with live_trainer.client() as c:
        yield c


# ---- state and training ------------------------------------------------------------------------
def test_health_and_state(client):
    assert client.get("/api/health").json() == {"ok": True, "version": acc.__version__}
    state = client.get("/api/state").json()
    assert state["status"] == "idle" and state["step"] == 0 and state["device"] == "cpu"
    assert [t["name"] for t in state["tasks"]] == ["reconstruction_task"]
    fingerprints = client.get("/api/fingerprints").json()
    assert len(fingerprints["model"]) == 64
    assert set(fingerprints["tasks"]) <= {"reconstruction_task"}


def test_train_start_pause_resume_stop(client):
    before = client.get("/api/fingerprints").json()
    assert client.post("/api/train", json={"action": "start"}).json()["status"] == "running"
    wait_state(client, lambda s: s["step"] > 0)
    paused = client.post("/api/train", json={"action": "pause"}).json()
    assert paused["status"] == "paused"
    assert client.get("/api/state").json()["step"] == paused["step"]  # no step runs while paused
    assert client.post("/api/train", json={"action": "resume"}).json()["status"] == "running"
    wait_state(client, lambda s: s["step"] > paused["step"])
    stopped = client.post("/api/train", json={"action": "stop"}).json()
    assert stopped["status"] == "idle"
    assert client.get("/api/fingerprints").json()["model"] != before["model"]  # it learned


def test_metrics_history_and_runs(client):
    state = train(client, 12)
    series = client.get("/api/metrics", params={"keys": "loss/total,lr"}).json()["series"]
    assert set(series) == {"loss/total", "lr"}
    assert series["loss/total"]["step"] == list(range(1, 13))
    window = client.get("/api/metrics", params={"keys": "loss/total", "since": 5, "until": 8}).json()
    assert window["series"]["loss/total"]["step"] == [5, 6, 7, 8]
    thin = client.get("/api/metrics", params={"keys": "loss/total", "max_points": 3}).json()
    assert len(thin["series"]["loss/total"]["step"]) <= 3
    everything = client.get("/api/metrics").json()["series"]
    assert {"loss/total", "loss/reconstruction_task", "grad_norm", "lr", "samples_per_s"} <= set(everything)
    assert client.get("/api/metrics", params={"keys": "no/such"}).json() == {
        "series": {"no/such": {"step": [], "value": []}}}

    runs = client.get("/api/runs").json()
    assert runs[0]["id"] == state["run_id"] and runs[0]["config"]["model"]["name"] == "factor_slot"
    by_run = client.get("/api/metrics", params={"keys": "lr", "run": state["run_id"]}).json()
    assert by_run["series"]["lr"]["step"] == list(range(1, 13))
    assert client.get("/api/metrics", params={"run": 999}).status_code == 404


# ---- tasks and registries ----------------------------------------------------------------------
def test_task_lifecycle(client):
    created = client.post("/api/tasks", json={"type": "ClassificationTask", "name": "digit", "latent": "digit",
                                              "weight": 0.5, "isolation": "probe"})
    assert created.status_code == 201
    assert created.json() | {"last_loss": None} == {
        "name": "digit", "type": "ClassificationTask", "latent": "digit", "dataset": "mnist", "weight": 0.5,
        "enabled": True, "stale": False, "error": None, "last_loss": None, "step_ms": None, "slow": False}
    state = client.get("/api/state").json()
    assert [t["name"] for t in state["tasks"]] == ["reconstruction_task", "digit"]
    assert "digit" in client.get("/api/fingerprints").json()["tasks"]

    updated = client.patch("/api/tasks/digit", json={"weight": 2.0, "enabled": False}).json()
    assert updated["weight"] == 2.0 and updated["enabled"] is False
    assert client.delete("/api/tasks/digit").status_code == 204
    assert [t["name"] for t in client.get("/api/state").json()["tasks"]] == ["reconstruction_task"]
    assert client.delete("/api/tasks/digit").status_code == 404


def test_task_params_are_checked_against_the_dataset_when_added(live_trainer, client):
    refused = client.post("/api/tasks", json={"type": "RegressionTask", "name": "ink", "params": {"target": "x"}})
    assert refused.status_code == 422, refused.text  # not a green "added", then disabled at the first step
    assert "no target 'x'" in refused.json()["detail"] and "its targets: none" in refused.json()["detail"]
    assert [t["name"] for t in client.get("/api/state").json()["tasks"]] == ["reconstruction_task"]

    digits = load_mnist(live_trainer.session.workspace.mnist_dir).subset(torch.arange(200))
    ink = digits.images.float().mean(dim=(1, 2, 3)) / 255
    Dataset(digits.images, digits.labels, {"ink": ink}, {"source": "test"}).save(
        live_trainer.session.workspace.data_dir / "inked.pt")
    wrong = client.post("/api/tasks", json={"type": "RegressionTask", "name": "ink", "dataset": "inked",
                                            "params": {"target": "thickness"}})
    assert wrong.status_code == 422 and "its targets: ink" in wrong.json()["detail"]
    created = client.post("/api/tasks", json={"type": "RegressionTask", "name": "ink", "dataset": "inked",
                                              "params": {"target": "ink"}})
    assert created.status_code == 201 and created.json()["type"] == "RegressionTask"


def test_registry_listings(client):
    tasks = client.get("/api/registry/tasks").json()
    by_name = {item["name"]: item for item in tasks["items"]}
    assert {"ReconstructionTask", "ClassificationTask", "RegressionTask"} <= set(by_name)
    regression = by_name["RegressionTask"]
    assert regression["doc"] and regression["file"].endswith("regression.py")
    assert "target" in regression["params"]["schema"]["properties"]
    assert tasks["errors"] == []
    # The listed default name is the one the trainer gives a task added without a name.
    listed = by_name["ClassificationTask"]["params"]["defaults"]["name"]
    added = client.post("/api/tasks", json={"type": "ClassificationTask"})
    assert added.status_code == 201 and added.json()["name"] == listed == "classification_task"
    for kind in ("generators", "recipes"):
        assert set(client.get(f"/api/registry/{kind}").json()) == {"items", "errors"}
    assert client.get("/api/registry/models").status_code == 422


# ---- evaluation, images, checkpoints -----------------------------------------------------------
def test_eval_now_and_history(client):
    train(client, 3)
    result = client.post("/api/eval").json()
    assert result["step"] == 3 and result["results"]["reconstruction_task"]["loss"] > 0
    history = client.get("/api/evals", params={"limit": 5}).json()
    assert history[0]["step"] == 3 and history[0]["results"] == result["results"]


def test_reconstructions_png(client):
    response = client.get("/api/images/reconstructions.png", params={"n": 5})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    cell = 28 * SCALE + GAP
    assert image.size == (5 * cell + GAP, 2 * cell + GAP) and image.mode == "L"
    for n in (0, 65):
        assert client.get("/api/images/reconstructions.png", params={"n": n}).status_code == 422


def test_checkpoint_save_list_load(client):
    trained = train(client, 5)
    saved = client.post("/api/checkpoints", json={"name": "base"})
    assert saved.status_code == 201
    checkpoint = saved.json()
    run_name = client.get("/api/runs").json()[0]["name"]
    assert checkpoint["name"] == "base" and checkpoint["step"] == 5 and checkpoint["parent"] is None
    assert checkpoint["branch"] == run_name and checkpoint["run_id"] == trained["run_id"]
    assert "loss/reconstruction_task" in checkpoint["metrics"]
    assert client.get("/api/checkpoints").json() == [checkpoint]

    trained_weights = client.get("/api/fingerprints").json()
    train(client, 3)
    assert client.get("/api/fingerprints").json() != trained_weights
    loaded = client.post(f"/api/checkpoints/{checkpoint['id']}/load").json()
    assert loaded["step"] == 5 and loaded["parent_checkpoint"] == checkpoint["id"]
    assert client.get("/api/fingerprints").json() == trained_weights  # the very same weights
    assert loaded["run_id"] != trained["run_id"]
    assert client.post("/api/checkpoints/deadbeef0000/load").status_code == 404


def test_a_corrupted_checkpoint_is_a_409_naming_the_file_and_nothing_loads(live_trainer, client):
    train(client, 3)
    saved = client.post("/api/checkpoints", json={"name": "c"}).json()
    train(client, 2)
    before = client.get("/api/state").json()
    weights = live_trainer.session.workspace.checkpoints_dir / saved["id"] / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor value
    weights.write_bytes(bytes(data))
    refused = client.post(f"/api/checkpoints/{saved['id']}/load")
    assert refused.status_code == 409 and str(weights) in refused.json()["detail"]
    assert client.get("/api/state").json() == before


def test_engine_errors_map_to_http():
    for error, code in ((KeyError("x"), 404), (ValueError("x"), 422), (TypeError("x"), 422), (TimeoutError(), 503)):
        with pytest.raises(HTTPException) as caught, engine_errors():
            raise error
        assert caught.value.status_code == code


# ---- the event stream --------------------------------------------------------------------------
def test_stream_metrics_arrive_within_a_second(live_trainer, client, sse):
    published: dict[int, float] = {}
    unsubscribe = live_trainer.session.engine.subscribe(
        lambda e: published.setdefault(e["step"], time.monotonic()) if e["type"] == "metrics" else None)
    try:
        with sse(live_trainer) as events:
            hello = events.wait_for("hello")
            assert hello["status"] == "idle" and hello["run_id"] == live_trainer.session.engine.run_id
            client.post("/api/train", json={"action": "start", "steps": 60})
            latencies, seen = [], []
            for kind, data in events:
                if kind == "metrics":
                    arrived = time.monotonic()
                    latencies += [arrived - published[step] for step in data["step"]]
                    seen += data["step"]
                    assert set(data["values"]) >= {"loss/total", "loss/reconstruction_task"}
                    assert all(len(v) == len(data["step"]) for v in data["values"].values())
                if seen and seen[-1] == 60:
                    break
        assert seen == list(range(1, 61))  # every step once, in order
        assert max(latencies) < 1.0, f"slowest metric took {max(latencies):.3f} s"
    finally:
        unsubscribe()


def test_stream_traffic_is_batched(trainer_factory, tiny_config, sse):
    trainer = trainer_factory(config=replace(tiny_config, batch_size=8))  # small batches: many steps/s
    with trainer.client() as client, sse(trainer) as events:
        events.wait_for("hello")
        client.post("/api/train", json={"action": "start"})
        first = events.wait_for("metrics")
        start, start_bytes, batches, steps = time.monotonic(), events.bytes, 0, 0
        for kind, data in events:
            if kind == "metrics":
                batches, steps = batches + 1, steps + len(data["step"])
            if time.monotonic() - start >= 3:
                break
        elapsed = time.monotonic() - start
        rate = (events.bytes - start_bytes) / elapsed
        client.post("/api/train", json={"action": "stop"})
    keys = len(first["values"])
    print(f"\nSSE: {rate / 1000:.1f} kB/s, {batches / elapsed:.1f} events/s at {steps / elapsed:.0f} steps/s, "
          f"{keys} keys; {(events.bytes - start_bytes) / steps:.0f} B/step")
    assert batches / elapsed <= 6  # one event per ~200 ms, however fast the steps come
    assert rate < 50_000
    assert (events.bytes - start_bytes) / steps * 50 < 25_000  # and at 50 steps/s


def test_stream_state_events(live_trainer, client, sse):
    with sse(live_trainer) as events:
        events.wait_for("hello")
        client.post("/api/tasks", json={"type": "ClassificationTask", "name": "digit", "latent": "digit"})
        assert events.wait_for("state", lambda d: d["kind"] == "task_added")["data"]["task"]["name"] == "digit"
        client.patch("/api/tasks/digit", json={"weight": 3})
        assert events.wait_for("state", lambda d: d["kind"] == "task_updated")["data"]["weight"] == 3
        client.post("/api/train", json={"action": "start", "steps": 2})
        assert events.wait_for("state", lambda d: d["kind"] == "status")["data"]["status"] == "running"
        assert events.wait_for("state", lambda d: d["kind"] == "status")["data"]["status"] == "idle"
        client.post("/api/eval")
        assert "digit" in events.wait_for("eval")["results"]
        client.post("/api/checkpoints", json={"name": "c1"})
        assert events.wait_for("state", lambda d: d["kind"] == "checkpoint")["data"]["name"] == "c1"
        client.delete("/api/tasks/digit")
        events.wait_for("state", lambda d: d["kind"] == "task_removed")


def test_stream_registry_and_error_events(workspace, trainer_factory, sse):
    folder = write_user_tasks(workspace, {"failing.py": FAILING_TASK})
    trainer = trainer_factory()
    with trainer.client() as client, sse(trainer) as events:
        events.wait_for("hello")
        (folder / "dummy_task.py").write_text(DUMMY_TASK)
        change = events.wait_for("registry", lambda d: "DummyTask" in d["added"], timeout=5)
        assert change["kind"] == "tasks" and change["errors"] == []
        assert "DummyTask" in {i["name"] for i in client.get("/api/registry/tasks").json()["items"]}

        (folder / "broken.py").write_text("def oops(:\n")
        change = events.wait_for("registry", lambda d: d["errors"], timeout=5)
        assert change["errors"][0]["file"].endswith("broken.py") and change["errors"][0]["line"] == 1

        assert client.post("/api/tasks", json={"type": "FailingTask"}).status_code == 201
        client.post("/api/train", json={"action": "start", "steps": 5})
        error = events.wait_for("error")
        assert error["task"] == "failing_task" and "boom from user code" in error["message"]
        failing = next(t for t in client.get("/api/state").json()["tasks"] if t["name"] == "failing_task")
        assert failing["enabled"] is False and "boom" in failing["error"]


def test_stream_keeps_idle_connections_alive(live_trainer, monkeypatch):
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.2)  # FastAPI's SSE keep-alive, 15 s by default
    with live_trainer.client() as client, client.stream("GET", "/api/stream") as response:
        assert next(line for line in response.iter_lines() if line.startswith(":")) == ": ping"


def test_stream_disconnect_frees_the_client(live_trainer, sse):
    broadcaster = live_trainer.app.state.broadcaster
    with sse(live_trainer) as events:
        events.wait_for("hello")
        assert len(broadcaster.clients) == 1
    deadline = time.monotonic() + 5
    while broadcaster.clients:  # the server notices the disconnect on its own schedule
        assert time.monotonic() < deadline, "the stream's queue outlived its client"
        time.sleep(0.02)


def test_slow_client_drops_old_metrics_not_other_events():
    client = Client(bound=10)
    client.put(("state", {"kind": "status"}))
    for step in range(100):
        client.put(("metrics", {"step": [step]}))
    client.put(("registry", {"added": ["X"]}))
    kinds = [kind for kind, _ in client.events]
    assert len(kinds) == 10 and kinds[0] == "state" and kinds[-1] == "registry"
    assert [data["step"] for kind, data in client.events if kind == "metrics"] == [[s] for s in range(92, 100)]


# ---- lifecycle ---------------------------------------------------------------------------------
def test_sigterm_ends_serve_within_5s_with_metrics_flushed(workspace):
    with socket.socket() as sock:  # a free port for the child (released just before it binds)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = ("from acc.engine import EngineConfig; from acc.server.app import serve; "
            f"serve('127.0.0.1', {port}, {str(workspace.root)!r}, None, "
            f"EngineConfig(model={TINY_MODEL!r}, batch_size=32, device='cpu', eval_every=0))")
    log = (workspace.root / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # as the fixtures: see trainer_factory
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert process.poll() is None and time.monotonic() < deadline, "serve() did not start"
                    time.sleep(0.05)
            client.post("/api/tasks", json={"type": "ReconstructionTask"})
            client.post("/api/train", json={"action": "start"})
            state = wait_state(client, lambda s: s["step"] >= 20)
            with client.stream("GET", "/api/stream") as stream:  # an open stream must not hold shutdown
                next(stream.iter_lines())
                sent = time.monotonic()
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=5)
                elapsed = time.monotonic() - sent
    finally:
        process.kill()
        log.close()
    assert process.returncode in (0, -signal.SIGTERM), (workspace.root / "serve.log").read_text()
    assert elapsed < 5
    with Store(workspace.db_path) as store:
        assert store.last_step(state["run_id"]) >= state["step"]
        assert store.run(state["run_id"])["status"] == "stopped"  # SIGTERM cut its training short
