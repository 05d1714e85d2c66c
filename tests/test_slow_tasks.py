"""A slow task: reading the state never waits for the training thread, each task's time per step is
measured, and a task over the limit is flagged by name (issue: a 5 s task froze every control)."""

from __future__ import annotations

import threading
from dataclasses import replace

import httpx

from acc.engine.session import Session
from tests.conftest import write_user_tasks

GATED = '''
import threading
import torch.nn.functional as F
from acc.tasks.base import Task

class GatedTask(Task):
    """Its loss waits until the test opens the gate: a step that takes as long as the test wants."""
    entered = threading.Event()
    gate = threading.Event()

    def loss(self, out, batch):
        type(self).entered.set()
        type(self).gate.wait(60)
        return F.mse_loss(self.head(self.features(out)).squeeze(-1), batch["image"].mean(dim=(1, 2, 3)))
'''

SLOW = '''
import time
import torch.nn.functional as F
from acc.tasks.base import Task

class SlowTask(Task):
    """Takes 50 ms in its loss."""
    def loss(self, out, batch):
        time.sleep(0.05)
        return F.mse_loss(self.head(self.features(out)).squeeze(-1), batch["image"].mean(dim=(1, 2, 3)))
'''


def test_state_answers_while_a_step_is_stuck_in_a_task(workspace, tiny_config, trainer_factory):
    write_user_tasks(workspace, {"gated.py": GATED})
    trainer = trainer_factory(tasks=["ReconstructionTask", "GatedTask"])
    task = trainer.session.tasks.get("GatedTask")
    try:
        with httpx.Client(base_url=trainer.base_url, timeout=10) as client:  # a stuck state read fails in 10 s
            assert client.post("/api/train", json={"action": "start"}).status_code == 200
            assert task.entered.wait(30)  # the engine thread is inside the task's loss now
            for _ in range(3):  # the dashboard polls: none of these may queue behind the step
                state = client.get("/api/state")
                assert state.status_code == 200 and state.json()["status"] == "running"
            with httpx.Client(base_url=trainer.base_url, timeout=10) as stream_client:
                with stream_client.stream("GET", "/api/stream") as stream:  # its hello is the state too
                    assert next(stream.iter_lines()).startswith("event: hello")
            task.gate.set()
            assert client.post("/api/train", json={"action": "pause"}).json()["status"] == "paused"
            assert len(client.get("/api/fingerprints").json()["model"]) == 64  # between two steps
    finally:
        task.gate.set()


def test_each_tasks_time_is_measured_and_a_slow_one_is_flagged_by_name(workspace, tiny_config):
    write_user_tasks(workspace, {"slow.py": SLOW})
    config = replace(tiny_config, slow_task_s=0.02)
    with Session.open(workspace.root, config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        engine.add_task("SlowTask")
        events, flagged = [], threading.Event()
        engine.subscribe(lambda e: (events.append(e), flagged.set()) if e["type"] == "error" else None)
        engine.train(3)
        assert flagged.is_set()
        tasks = {t["name"]: t for t in engine.state()["tasks"]}
        assert tasks["slow_task"]["slow"] and tasks["slow_task"]["step_ms"] >= 50
        assert not tasks["reconstruction_task"]["slow"] and tasks["reconstruction_task"]["step_ms"] < 50
        assert tasks["slow_task"]["enabled"]  # flagged, not disabled: slow is not wrong
        assert [e["task"] for e in events] == ["slow_task"]  # once, when it turned slow, not every step
        assert "slow_task" in events[0]["message"] and "slow" in events[0]["message"]
        session.store.flush()
        times = session.store.query_metrics(engine.run_id, ["time/slow_task", "time/reconstruction_task"])
        assert len(times["time/slow_task"]["value"]) == 3 and min(times["time/slow_task"]["value"]) >= 50
        assert max(times["time/reconstruction_task"]["value"]) < 50
