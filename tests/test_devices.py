"""Devices and evaluation beside training (M4, mode 1): the device list, role changes and bad
input, the worker's mailbox (the newest snapshot wins; handing one over never waits), a worker
that dies, and training that keeps making steps while an evaluation runs in the worker."""

from __future__ import annotations

import os

import httpx
import pytest
import torch

from acc.engine.device_commands import EVAL_TIMEOUT_S
from acc.engine.devices import DeviceManager, check_device, cpu_model
from acc.engine.eval_worker import EvalWorker, EvalWorkerError
from acc.engine.session import Session
from acc.ui.client import TrainerClient
from tests.conftest import write_user_tasks

# A task whose evaluation takes a while (a slow metric), and one that kills the process that
# evaluates it while a marker file exists: the worker, never the training thread (eval_every=0).
SLOW_TASKS = '''
import multiprocessing, os, time
from pathlib import Path
import torch.nn.functional as F
from acc.tasks.base import Task

class SlowEvalTask(Task):
    """Mean brightness regression, with a metric that takes two seconds."""
    def loss(self, out, batch):
        return F.mse_loss(self.head(self.features(out)).squeeze(-1), batch["image"].mean(dim=(1, 2, 3)))

    def metrics(self, out, batch):
        time.sleep(2.0)  # the workload: an evaluation that takes seconds
        return {"brightness_mse": float(self.loss(out, batch))}


class CrashingEvalTask(SlowEvalTask):
    """Kills its evaluation worker once (the marker file says when)."""
    def metrics(self, out, batch):
        marker = Path(os.environ["ACC_TEST_CRASH_MARKER"])
        if multiprocessing.current_process().name.startswith("acc-eval") and marker.exists():
            marker.unlink()
            os._exit(3)
        return {"brightness_mse": float(self.loss(out, batch))}
'''


def test_the_device_list_describes_the_cpu_with_and_without_nvml():
    for nvml in (True, False):
        manager = DeviceManager(poll_s=0.05, nvml=nvml)
        try:
            devices = manager.list()
            cpu = devices[0]
            assert cpu["name"] == "cpu" and cpu["kind"] == "cpu"
            assert 0 < cpu["memory_used"] < cpu["memory_total"] and 0 <= cpu["utilization"] <= 100
            assert len(devices) == 1 + (torch.cuda.device_count() if torch.cuda.is_available() else 0)
            assert manager.source in ("nvml", "torch", "none")
        finally:
            manager.close()
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="devices: cpu"):
        check_device("cuda:7" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError):
        check_device("tpu")


@pytest.fixture
def slow_session(workspace, tiny_config, monkeypatch, tmp_path):
    write_user_tasks(workspace, {"slow_tasks.py": SLOW_TASKS})
    monkeypatch.setenv("ACC_TEST_CRASH_MARKER", str(tmp_path / "crash-once"))
    tiny_config.eval_device = "cpu"
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        yield session


def test_training_goes_on_while_the_worker_evaluates(slow_session):
    engine = slow_session.engine
    engine.add_task("ReconstructionTask")
    engine.add_task("SlowEvalTask", name="slow")
    assert engine.roles()["eval"] == "cpu" and engine.roles()["eval_worker"]["alive"]
    engine.start(None)
    try:
        results = engine.evaluate()  # waits here for the worker; training does not
        after = engine.step
    finally:
        engine.stop()
    assert "brightness_mse" in results["slow"] and "mse" in results["reconstruction_task"]
    slow_session.store.flush()
    recorded = slow_session.store.evals(engine.run_id)[0]
    assert recorded["results"] == results
    # The result carries the step of its snapshot, and training went on for the 2 s it took.
    assert recorded["step"] + 5 <= after, (recorded["step"], after)


def test_the_newest_snapshot_wins_and_handing_one_over_never_waits(slow_session):
    engine = slow_session.engine
    engine.add_task("SlowEvalTask", name="slow")
    worker = engine.eval_worker
    first = worker.evaluate(engine._eval_snapshot())  # starts at once, takes 2 s
    engine.train(2, timeout=60)
    second = worker.evaluate(engine._eval_snapshot())  # waits in the mailbox...
    engine.train(2, timeout=60)
    third = worker.evaluate(engine._eval_snapshot())  # ...and is replaced by this one
    assert not second.done() and not third.done()  # handed over, nothing waited for
    assert first.result(EVAL_TIMEOUT_S)["step"] == 0
    assert third.result(EVAL_TIMEOUT_S)["step"] == 4
    assert second.result(EVAL_TIMEOUT_S) == third.result()  # the replaced one's waiter got the newer result


def test_a_worker_that_dies_is_restarted_and_training_goes_on(slow_session, tmp_path):
    engine = slow_session.engine
    engine.add_task("ReconstructionTask")
    engine.add_task("CrashingEvalTask", name="crashing")
    (tmp_path / "crash-once").touch()
    with pytest.raises(EvalWorkerError, match="died .*restarted"):
        engine.evaluate()
    assert engine.eval_worker.restarts == 1
    engine.train(5, timeout=60)  # the engine never noticed
    results = engine.evaluate()  # the restarted worker answers (the marker is gone)
    assert "brightness_mse" in results["crashing"]


def test_a_worker_error_is_an_error_not_a_crash(workspace, tiny_config):
    worker = EvalWorker("cpu", workspace.root, {"val_fraction": 0.1, "seed": 0, "eval_samples": 32, "batch_size": 32})
    try:
        bad = worker.evaluate({"step": 1, "run_id": 1, "model": {"name": "nope"}, "weights": b"", "tasks": []})
        with pytest.raises(EvalWorkerError, match="unknown model"):
            bad.result(EVAL_TIMEOUT_S)
        assert worker.alive and worker.restarts == 0
    finally:
        worker.close()


def test_factoring_jobs_run_in_the_worker(slow_session):
    engine = slow_session.engine
    engine.add_task("ReconstructionTask")
    engine.train(3, timeout=60)
    checkpoint = engine.save_checkpoint("tiny")
    job = slow_session.factoring.start(checkpoint["id"])
    slow_session.jobs.wait(job.id, timeout=EVAL_TIMEOUT_S)
    assert job.status == "done", job.error
    report = slow_session.factoring.report(checkpoint["id"])
    assert report["step"] == 3 and report["traversal"]
    assert slow_session.factoring.figure(checkpoint["id"], "traversal", "thickness").is_file()



def test_checkpoints_record_the_numerics_they_were_trained_under(workspace, tiny_config, monkeypatch):
    """Threads, instruction set and device decide a step's bits besides the seed: each checkpoint
    lists those of its steps since its parent, and a change mid-run (an eval worker on the same
    CPU takes cores from training) is announced and listed."""
    events = []
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = session.engine
        engine.subscribe(events.append)
        engine.add_task("ReconstructionTask")
        engine.train(2, timeout=60)
        first = engine.save_checkpoint("first")
        [before] = first["trained_under"]
        assert before == {"torch": torch.__version__, "device": "cpu", "ranks": 1, "cpu_model": cpu_model(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": before["threads"]}
        assert before["cpu_model"]  # a name, at worst the architecture's
        engine.train(2, timeout=60)  # since "first": nothing changed, one entry again
        assert engine.save_checkpoint("second")["trained_under"] == [before]

        # A box with room for a worker of threads+1 beside training with threads+1: training's count changes.
        monkeypatch.setattr(os, "cpu_count", lambda: 2 * before["threads"] + 2)
        engine.start(None)
        engine.set_eval_device("cpu")  # applied between two steps of the running training
        engine.stop()
        engine.train(2, timeout=60)
        third = engine.save_checkpoint("third")
        stored = session.store.checkpoint("third")["meta"]["trained_under"]
    after = {**before, "threads": before["threads"] + 1}
    # the steps made before the change (if the loop made any before the command) come first
    assert third["trained_under"] in ([before, after], [after]) and stored == third["trained_under"]
    changed = [e for e in events if e.get("kind") == "threads"]
    assert len(changed) == 1 and changed[0]["data"]["threads"] == after["threads"], changed



def test_threads_held_by_request_stay_when_a_worker_shares_the_cpu(workspace, tiny_config, monkeypatch):
    tiny_config.threads = 2
    events = []
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # a worker would leave training 2 of 4 cores... or
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = session.engine
        engine.subscribe(events.append)
        engine.add_task("ReconstructionTask")
        engine.train(2, timeout=60)
        monkeypatch.setattr(os, "cpu_count", lambda: 8)  # ...4 of 8: held at 2 all the same
        engine.start(None)
        engine.set_eval_device("cpu")
        engine.stop()
        engine.train(2, timeout=60)
        assert engine.roles()["train_threads"] == 2
        checkpoint = engine.save_checkpoint("held")
    assert [entry["threads"] for entry in checkpoint["trained_under"]] == [2]
    assert not [e for e in events if e.get("kind") == "threads"]


# ---- the API ------------------------------------------------------------------------------------
def test_devices_over_http(live_trainer):
    with TrainerClient(live_trainer.base_url) as client:
        listing = client.devices()
        assert listing["train"] == "cpu" and listing["eval"] is None and listing["mode"] == "single"
        assert listing["devices"][0]["name"] == "cpu"
        on = client.set_devices(eval="cpu")
        assert on["eval"] == "cpu" and on["eval_worker"]["alive"]
        assert client.set_devices(train="cpu")["train"] == "cpu"
        off = client.set_devices(eval=None)
        assert off["eval"] is None
    before = httpx.get(f"{live_trainer.base_url}/api/devices").json()
    for body in ({"train": "cuda:9"}, {"train": None}, {"eval": "tpu:0"}, {"mode": "ddp"}, {"mode": "ddp", "ranks": 1},
                 {"mode": "single", "ranks": 2}, {"ranks": (os.cpu_count() or 1) + 1}, {"ranks": 0}, {"train": 3}, {"gpu": "cpu"}):
        response = httpx.put(f"{live_trainer.base_url}/api/devices", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"]
    after = httpx.get(f"{live_trainer.base_url}/api/devices").json()
    assert {k: after[k] for k in ("train", "eval", "mode")} == {k: before[k] for k in ("train", "eval", "mode")}
