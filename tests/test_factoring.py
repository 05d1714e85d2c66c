"""The factoring evaluation of checkpoints over real HTTP: a job beside training, the stored report
and figures, re-runs answered from the store, bad checkpoints, a model without attention, `acc eval`."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image


DIGIT = {"type": "ClassificationTask", "name": "digit", "latent": "digit"}


def _finished(trainer, job: dict, timeout: float = 300) -> dict:
    final = trainer.session.jobs.wait(job["id"], timeout)
    assert final.status in ("done", "failed"), final
    return final.public()


def _png(response) -> Image.Image:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
    return Image.open(io.BytesIO(response.content))


def _listed(http, checkpoint: dict) -> dict:
    """The checkpoint's row in GET /api/checkpoints."""
    return next(row for row in http.get("/api/checkpoints").json() if row["id"] == checkpoint["id"])


@pytest.fixture
def trained(trainer_factory):
    """A trainer with a checkpoint of a tiny Factor-Slot model that trained a few steps with a digit task."""
    trainer = trainer_factory(tasks=["ReconstructionTask", DIGIT])
    trainer.session.engine.train(20)
    checkpoint = trainer.session.engine.save_checkpoint("small")
    return trainer, checkpoint


def test_a_checkpoint_is_evaluated_beside_training_and_its_report_and_figures_are_served(trained, sse):
    trainer, checkpoint = trained
    engine = trainer.session.engine
    with trainer.client() as http, sse(trainer, read_timeout=300) as events:
        events.wait_for("hello")
        assert http.get(f"/api/checkpoints/{checkpoint['id']}/factoring").status_code == 404  # none yet
        assert _listed(http, checkpoint)["ufr"] is None
        engine.start()  # training goes on while it evaluates
        before = engine.fingerprints()["model"]
        response = http.post(f"/api/checkpoints/{checkpoint['id']}/factoring", json={})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["kind"] == "factoring" and job["checkpoint"] == checkpoint["id"]  # names need not be unique
        done = events.wait_for("factoring", lambda e: e["job"] == job["id"] and e["status"] in ("done", "failed"),
                               timeout=300)
        assert done["status"] == "done", done
        assert engine.state()["status"] == "running" and engine.fingerprints()["model"] != before  # it trained on
        engine.stop()

        report = http.get(f"/api/checkpoints/{checkpoint['id']}/factoring").json()
        assert report["checkpoint"] == checkpoint["id"] and report["step"] == 20
        assert set(report["concepts"]) == {"thickness", "slant", "digit"}  # digit: a task supervises its slot
        for name, concept in report["concepts"].items():
            assert concept["slot"] == name and 0 <= concept["I"] <= 1 and 0 <= concept["L"] <= 1
            assert len(concept["P"]) == len(concept["contexts"])
        assert 0 <= report["ufr"] <= 1 and report["assignment_rule"] == "given"
        assert _listed(http, checkpoint)["ufr"] == report["ufr"]  # the tree's badge, without a request per node
        assert report["slot_info"]["slots"] == ["digit", "thickness", "slant", "style"]
        assert {"rho", "range", "class_kept"} <= set(report["traversal"]["thickness"])
        probe = report["traversal"]["thickness"]["probe"]  # the diagnosis beside it
        assert set(probe) == {"rho", "range", "class_kept"} and -1 <= probe["rho"] <= 1 and probe["range"] >= 0
        assert 0 <= report["mig"]["mig"] <= 1 and "importance_model" in report["dci"]
        assert report["parts_missing"] == [] and report["attention"]["entropy"].keys() == {
            "digit", "thickness", "slant", "style"}

        for group in ("thickness", "style"):
            grid = _png(http.get(f"/api/checkpoints/{checkpoint['id']}/figures/traversal.png", params={"group": group}))
            assert grid.width > 9 * 28 and grid.height > 5 * 28  # 5 seeds x 9 steps, labelled
            _png(http.get(f"/api/checkpoints/{checkpoint['id']}/figures/activation.png", params={"group": group}))
        _png(http.get(f"/api/checkpoints/{checkpoint['id']}/figures/attention.png"))
        assert http.get(f"/api/checkpoints/{checkpoint['id']}/figures/traversal.png",
                        params={"group": "nope"}).status_code == 404
        assert http.get(f"/api/checkpoints/{checkpoint['id']}/figures/movie.png").status_code == 422

        again = http.post(f"/api/checkpoints/{checkpoint['id']}/factoring", json={}).json()
        final = _finished(trainer, again)
        assert final["status"] == "done" and final["result"]["cached"] is True  # answered from the store
        assert http.get(f"/api/checkpoints/{checkpoint['id']}/factoring").json()["created"] == report["created"]


def test_unknown_and_corrupt_checkpoints_and_a_model_without_attention(trainer_factory):
    trainer = trainer_factory(tasks=["ReconstructionTask"])
    engine, store = trainer.session.engine, trainer.session.store
    with trainer.client() as http:
        assert http.post("/api/checkpoints/nope/factoring", json={}).status_code == 404
        assert http.get("/api/checkpoints/nope/factoring").status_code == 404
        assert http.post("/api/checkpoints/x/factoring", json={"seeds": 0}).status_code == 422

        engine.train(3)
        broken = engine.save_checkpoint("broken")
        weights = trainer.session.workspace.checkpoints_dir / broken["id"] / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
        final = _finished(trainer, http.post(f"/api/checkpoints/{broken['id']}/factoring", json={}).json())
        assert final["status"] == "failed" and "corrupted" in final["error"]
        assert store.factoring(broken["id"]) is None  # the store is as it was

        engine.set_model({"name": "conv_ae", "latent_dim": 8, "channels": 8})
        engine.add_task("ReconstructionTask")
        engine.train(3)
        plain = engine.save_checkpoint("plain")
        final = _finished(trainer, http.post(f"/api/checkpoints/{plain['id']}/factoring", json={}).json())
        assert final["status"] == "done", final
        report = http.get(f"/api/checkpoints/{plain['id']}/factoring").json()
        assert report["assignment_rule"] == "hungarian" and report["attention"] is None
        assert any("attention" in part for part in report["parts_missing"])
        assert set(report["concepts"]) == {"thickness", "slant"}
        assert http.get(f"/api/checkpoints/{plain['id']}/figures/attention.png").status_code == 404
        group = next(iter(report["slots"]))
        _png(http.get(f"/api/checkpoints/{plain['id']}/figures/traversal.png", params={"group": group}))


def test_acc_eval_prints_the_table_and_the_json_report(workspace, tiny_config):
    from acc.engine.session import Session
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        session.engine.add_task("ReconstructionTask")
        session.engine.train(5)
        session.engine.save_checkpoint("cli")
        runs = session.store.runs()
    command = [sys.executable, "-m", "acc", "eval", "cli", "--workspace", str(workspace.root)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert table.returncode == 0, table.stderr
    assert "UFR" in table.stdout and "thickness" in table.stdout and "slant" in table.stdout
    as_json = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=600)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["name"] == "cli" and set(report["concepts"]) == {"thickness", "slant"}
    missing = subprocess.run([sys.executable, "-m", "acc", "eval", "nope", "--workspace", str(workspace.root)],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "nope" in missing.stdout
    from acc.store import Store
    with Store(workspace.db_path) as store:
        assert [r["id"] for r in store.runs()] == [r["id"] for r in runs]  # evaluating opens no run
