"""Losing no work: runs end as finished/stopped/crashed, periodic autosaves, a restart continues the
last run, and whatever replaces unsaved training saves it first as "autosave before ..."."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import torch

from acc.engine.session import Session
from acc.store import Store
from acc.store.lineage import run_lineage
from tests.server_fixtures import free_port


def _train(session, steps):
    engine = session.engine
    engine.add_task("ReconstructionTask")
    engine.add_task("ClassificationTask", name="digit", latent="digit", weight=0.5)
    engine.train(steps, timeout=120)
    return engine


def test_runs_end_finished_stopped_or_crashed(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _train(session, 3)
        finished = engine.run_id
        assert session.store.run(finished)["status"] == "running"  # open while the engine holds it
        engine.set_model(dict(tiny_config.model))
        stopped = engine.run_id
        engine.add_task("ReconstructionTask")
        engine.start()  # until stopped
        engine.stop()
        engine.set_model(dict(tiny_config.model))
        assert session.store.run(finished)["status"] == "finished"
        assert session.store.run(stopped)["status"] == "stopped"

    # A trainer killed outright never ends its run: the next one to start finds it open and
    # its owner's lock free.
    script = f"""
import os
from acc.engine import EngineConfig
from acc.engine.session import Session
s = Session.open({str(workspace.root)!r}, EngineConfig(**{tiny_config.__dict__!r}), watch=False)
s.engine.add_task("ReconstructionTask")
s.engine.train(2)
s.store.flush()
print(s.engine.run_id, flush=True)
os._exit(9)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr
    killed = int(result.stdout.split()[-1])
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        assert session.engine.crashed_runs == [killed]
        assert session.store.run(killed)["status"] == "crashed"
        # A run that a live engine holds (this one) is not crashed by a second engine opening the workspace.
        with Session.open(workspace.root, tiny_config, watch=False) as other:
            assert other.store.run(session.engine.run_id)["status"] == "running"


def test_autosaves_are_periodic_bounded_and_restore_everything(workspace, tiny_config):
    config = replace(tiny_config, autosave_every_s=1e-9, autosave_keep=2)  # one after every step
    with Session.open(workspace.root, config, watch=False) as session:
        engine = _train(session, 6)
        session.engine.autosaver.wait()
        saved = session.engine.autosaver.all()
        assert 1 <= len(saved) <= 2  # the oldest are removed; a write still running may skip a step
        last_run, step = engine.run_id, engine.step
        images = engine.data["mnist"].validation.batch(torch.arange(8))["image"]
        with torch.no_grad():
            expected = engine.model(images)["recon"]
        optimizer = {engine._parameter_names()[p]: s["exp_avg"].clone() for p, s in engine.optimizer.state.items()}
    # close() wrote one more, of the final state
    assert session.engine.autosaver.all()[-1].meta["step"] == step

    with Session.open(workspace.root, config, watch=False, restore=True) as session:
        engine = session.engine
        assert "autosave" in engine.restored_from and f"run {last_run}" in engine.restored_from
        assert engine.step == step and engine.run_id != last_run
        assert [t["name"] for t in engine.state()["tasks"]] == ["reconstruction_task", "digit"]
        assert engine.state()["tasks"][1]["weight"] == 0.5
        with torch.no_grad():
            assert torch.equal(engine.model(images)["recon"], expected)
        names = engine._parameter_names()
        for p, state in engine.optimizer.state.items():
            assert torch.equal(state["exp_avg"], optimizer[names[p]])
        assert engine.state()["unsaved"]  # an autosave is no checkpoint of the tree
        assert session.store.run(engine.run_id)["config"]["continues"]["run_id"] == last_run
        segments = run_lineage(session.store, engine.run_id)
        assert [(s.run_id, s.until) for s in segments[:-1]] == [(last_run, step)]
        engine.train(2)

    with Session.open(workspace.root, config, watch=False, restore=False) as session:
        assert session.engine.restored_from is None and session.engine.step == 0  # --fresh


def test_a_broken_autosave_starts_fresh_and_says_why(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        _train(session, 2)
    latest = session.engine.autosaver.all()[-1]
    (latest.path / "weights.safetensors").write_bytes(b"garbage")
    with Session.open(workspace.root, tiny_config, watch=False, restore=True) as session:
        assert session.engine.restored_from is None and session.engine.step == 0
        assert "corrupted" in session.engine.restore_error
        assert any("starting fresh" in line for line in session.engine.start_report())


def test_replacing_unsaved_training_saves_it_first(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _train(session, 4)
        base = engine.save_checkpoint("base")
        assert not engine.state()["unsaved"]
        assert engine.load_checkpoint(base["id"])["autosaved"] is None  # nothing unsaved: nothing saved
        engine.train(3)
        assert engine.state()["unsaved"]
        state = engine.load_checkpoint(base["id"])
        autosave = session.store.checkpoint(state["autosaved"]["id"])
        assert autosave["name"] == "autosave before load base" and autosave["step"] == 7
        assert autosave["parent"] == base["id"] and state["step"] == 4

        engine.train(2)
        forked = engine.load_checkpoint(base["id"], branch="other")
        assert session.store.checkpoint(forked["autosaved"]["id"])["name"] == "autosave before fork base as other"

        engine.train(1)
        new = engine.set_model(dict(tiny_config.model))
        assert session.store.checkpoint(new["autosaved"]["id"])["name"] == "autosave before new model factor_slot"
        # the autosave holds what was trained: loading it gives back that step and those tasks
        back = engine.load_checkpoint(autosave["id"])
        assert back["step"] == 7 and [t["name"] for t in back["tasks"]] == ["reconstruction_task", "digit"]


def test_a_real_trainer_killed_mid_training_continues_where_it_autosaved(workspace, tmp_path):
    """kill -9 a real `acc trainer`: at most the autosave interval of training and at most a second
    of metrics are lost, no half-written checkpoint is listed, and the restart says what it loaded."""
    interval = 1.0
    port = free_port()
    command = [sys.executable, "-m", "acc", "trainer", "--port", str(port), "--workspace", str(workspace.root),
               "--autosave-every", str(interval), "--eval-every", "0", "--batch-size", "16", "--device", "cpu"]
    url = f"http://127.0.0.1:{port}"

    def start(log_name):
        log = open(tmp_path / log_name, "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/api/health", timeout=2)
                return process, log
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / log_name).read_text()
                assert time.monotonic() < deadline, "the trainer did not start"
                time.sleep(0.1)

    first, log = start("first.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            client.post("/api/tasks", json={"type": "ReconstructionTask"}).raise_for_status()
            client.post("/api/tasks", json={"type": "ClassificationTask", "name": "digit", "latent": "digit",
                                            "weight": 0.5}).raise_for_status()
            client.post("/api/checkpoints", json={"name": "early"}).raise_for_status()
            seen: list[tuple[float, int]] = []  # (when the stream delivered it, step)
            autosaves = 0
            with httpx.Client(base_url=url, timeout=30).stream("GET", "/api/stream") as stream:
                client.post("/api/train", json={"action": "start"}).raise_for_status()
                kind = None
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind == "metrics":
                        for step in json.loads(line[5:])["step"]:
                            seen.append((time.monotonic(), step))
                    elif line.startswith("data:") and kind == "state" and json.loads(line[5:])["kind"] == "autosave":
                        autosaves += 1
                    if autosaves >= 2 and seen and seen[-1][0] - seen[0][0] > 3 * interval:
                        break
                first.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
    finally:
        first.kill()
        first.wait()
        log.close()
    crash_step = seen[-1][1]

    with Store(workspace.db_path) as store:
        crashed_run = store.runs()[0]
        assert crashed_run["status"] == "running"  # nobody could end it
        stored = store.last_step(crashed_run["id"])
    second_before = max(step for when, step in seen if when <= killed_at - 1.0)
    assert stored >= second_before, f"metrics lost beyond a second: stored {stored}, seen {crash_step}"

    second, log = start("second.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            state = client.get("/api/state").json()
            restored = state["step"]
            assert [t["name"] for t in state["tasks"]] == ["reconstruction_task", "digit"]
            assert restored <= crash_step
            restored_at = min(when for when, step in seen if step >= restored)
            assert restored_at >= killed_at - interval - 0.5, (
                f"restored step {restored} was reached {killed_at - restored_at:.2f} s before the kill")
            names = [c["name"] for c in client.get("/api/checkpoints").json()]
            assert names == ["early"]  # autosaves are not nodes; nothing half-written is listed
            assert state["parent_checkpoint"] == client.get("/api/checkpoints").json()[0]["id"]
            runs = {run["id"]: run for run in client.get("/api/runs").json()}
            assert runs[crashed_run["id"]]["status"] == "crashed"
            history = client.get("/api/metrics", params={"keys": "loss/total", "ancestors": "true"}).json()
            assert history["series"]["loss/total"]["step"][0] == 1  # the crashed run's curve leads in
            client.post("/api/train", json={"action": "start", "steps": 3}).raise_for_status()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        log.close()
    output = (tmp_path / "second.log").read_text()
    assert f"run {crashed_run['id']} had not ended" in output and "continuing from the autosave" in output
    assert not list((workspace.root / "autosaves").glob(".tmp-*"))
