"""The recipe, job and fork endpoints over real HTTP."""

from __future__ import annotations

from tests.conftest import write_user_files
from tests.test_recipes import USER_RECIPES


def test_running_smoke_through_the_api_grows_the_tree(trainer_factory, workspace, sse):
    trainer = trainer_factory()
    with trainer.client() as http, sse(trainer) as events:
        events.wait_for("hello")
        response = http.post("/api/recipes/smoke/run", json={})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["kind"] == "recipe" and job["name"] == "Smoke"
        done = events.wait_for("job", lambda j: j["id"] == job["id"] and j["status"] not in ("queued", "running"),
                               timeout=120)
        assert done["status"] == "done" and done["progress"] == 1.0, done
        assert http.get(f"/api/jobs/{job['id']}").json()["status"] == "done"
        nodes = {c["name"]: c for c in http.get("/api/checkpoints").json()}
        assert nodes["smoke_recon"]["parent"] == nodes["smoke_base"]["id"] == nodes["smoke_digit"]["parent"]
        assert nodes["smoke_digit"]["branch"] == "smoke_digit"
        assert [j["id"] for j in http.get("/api/jobs").json()] == [job["id"]]

        # The curves that led to each branch: shared up to the fork at step 30, their own after.
        def curves(name: str) -> dict:
            response = http.get(f"/api/checkpoints/{nodes[name]['id']}/metrics")
            assert response.status_code == 200, response.text
            return response.json()["series"]
        recon, digit = curves("smoke_recon"), curves("smoke_digit")
        key = "loss/reconstruction_task"
        assert recon[key]["step"] == digit[key]["step"] == list(range(1, 51))
        assert recon[key]["value"][:30] == digit[key]["value"][:30] != []
        assert recon[key]["value"][30:] != digit[key]["value"][30:]
        assert "loss/digit" not in recon and digit["loss/digit"]["step"] == list(range(31, 51))
        assert http.get("/api/checkpoints/nope/metrics").status_code == 404
        assert http.get(f"/api/checkpoints/{nodes['smoke_base']['id']}/metrics?max_points=2").status_code == 422


def test_manual_edits_are_refused_while_a_recipe_drives_and_cancel_ends_it(trainer_factory, workspace):
    write_user_files(workspace, "recipes", {"user_recipes.py": USER_RECIPES})
    trainer = trainer_factory()
    with trainer.client() as http:
        job = http.post("/api/recipes/Long/run", json={}).json()
        refused = http.post("/api/tasks", json={"type": "ClassificationTask"})
        assert refused.status_code == 409 and "driving the engine" in refused.json()["detail"]
        assert http.post("/api/train", json={"action": "pause"}).status_code == 409
        assert http.post("/api/recipes/smoke/run", json={}).status_code == 409
        cancelled = http.post(f"/api/jobs/{job['id']}/cancel").json()
        assert cancelled["id"] == job["id"]
        final = trainer.session.jobs.wait(job["id"], 60)
        assert final.status == "cancelled"
        assert http.post("/api/tasks", json={"type": "ClassificationTask"}).status_code == 201


def test_a_failing_recipe_reports_its_error_and_the_trainer_keeps_serving(trainer_factory, workspace):
    write_user_files(workspace, "recipes", {"user_recipes.py": USER_RECIPES})
    trainer = trainer_factory()
    with trainer.client() as http:
        job = http.post("/api/recipes/Failing/run", json={}).json()
        final = trainer.session.jobs.wait(job["id"], 120)
        body = http.get(f"/api/jobs/{job['id']}").json()
        assert final.status == body["status"] == "failed"
        assert "the recipe broke here" in body["error"] and "user_recipes.py:" in body["error"]
        assert [c["name"] for c in http.get("/api/checkpoints").json()] == ["before_failure"]
        assert http.get("/api/state").json()["step"] == 5


def test_bad_recipe_and_job_requests_are_4xx(live_trainer):
    with live_trainer.client() as http:
        assert http.post("/api/recipes/NoSuch/run", json={}).status_code == 404
        assert http.post("/api/recipes/smoke/run", json={"params": {"x": 1}}).status_code == 422
        assert http.post("/api/recipes/smoke/run", json={"other": 1}).status_code == 422
        assert http.post("/api/recipes/..%2Fx/run", json={}).status_code in (404, 422)
        assert http.get("/api/jobs/999").status_code == 404
        assert http.post("/api/jobs/999/cancel").status_code == 404
        assert http.get("/api/jobs").json() == []


def test_fork_by_hand_starts_a_branch_from_a_checkpoint(live_trainer):
    with live_trainer.client() as http:
        http.post("/api/train", json={"action": "start", "steps": 3})
        live_trainer.session.engine.call("stop")  # wait until the 3 steps are applied or stopped
        base = http.post("/api/checkpoints", json={"name": "base"}).json()
        state = http.post(f"/api/checkpoints/{base['id']}/fork", json={"name": "try-lr"}).json()
        assert state["parent_checkpoint"] == base["id"] and state["step"] == base["step"]
        child = http.post("/api/checkpoints", json={"name": "after"}).json()
        assert child["parent"] == base["id"] and child["branch"] == "try-lr"
        # The branch's run is empty so far, but with its ancestors it begins with base's curves.
        own = http.get("/api/metrics", params={"keys": "loss/total"}).json()["series"]["loss/total"]
        full = http.get("/api/metrics", params={"keys": "loss/total", "ancestors": "true"}).json()["series"]
        assert own["step"] == [] and full["loss/total"]["step"] == list(range(1, base["step"] + 1))
        assert http.post(f"/api/checkpoints/{base['id']}/fork", json={"name": "a/b"}).status_code == 422
        assert http.post("/api/checkpoints/nope/fork", json={"name": "x"}).status_code == 404


def test_only_a_leaf_that_the_trainer_does_not_continue_from_can_be_deleted(live_trainer):
    from pathlib import Path

    with live_trainer.client() as http:
        a = http.post("/api/checkpoints", json={"name": "a"}).json()
        b = http.post("/api/checkpoints", json={"name": "b"}).json()  # a child of a; the trainer is at b
        assert b["parent"] == a["id"]
        has_children = http.delete(f"/api/checkpoints/{a['id']}")
        assert has_children.status_code == 409 and "child" in has_children.json()["detail"]
        current = http.delete(f"/api/checkpoints/{b['id']}")
        assert current.status_code == 409 and "continues from" in current.json()["detail"]
        http.post(f"/api/checkpoints/{a['id']}/load")
        path = Path(live_trainer.session.store.checkpoint(b["id"])["path"])
        assert path.is_dir()
        assert http.delete(f"/api/checkpoints/{b['id']}").status_code == 204
        assert [c["name"] for c in http.get("/api/checkpoints").json()] == ["a"] and not path.exists()
        assert http.delete(f"/api/checkpoints/{b['id']}").status_code == 404
        assert http.delete("/api/checkpoints/a").status_code == 404  # by id only: names repeat


def test_the_learning_rate_is_set_between_steps(live_trainer):
    with live_trainer.client() as http:
        assert http.put("/api/lr", json={"lr": 3e-4}).json()["lr"] == 3e-4
        assert all(g["lr"] == 3e-4 for g in live_trainer.session.engine.optimizer.param_groups)
        for bad in (0, -1, 11, "x", None):
            response = http.put("/api/lr", json={"lr": bad})
            assert response.status_code == 422 and response.json()["detail"]
        assert http.get("/api/state").json()["lr"] == 3e-4


def test_unsaved_training_is_saved_before_a_recipe_or_a_load_replaces_it(trainer_factory):
    """A training at step 3,200 with no checkpoint became a recipe's model at step 50: nothing kept."""
    trainer = trainer_factory(tasks=["ReconstructionTask", {"type": "ClassificationTask", "name": "digit",
                                                            "latent": "digit"}])
    engine = trainer.session.engine
    with trainer.client() as http:
        assert http.get("/api/state").json()["unsaved"] is False  # nothing trained yet
        engine.train(4)
        assert http.get("/api/state").json()["unsaved"] is True
        job = http.post("/api/recipes/smoke/run", json={}).json()
        assert job["autosaved"]["name"] == "autosave before Smoke" and job["autosaved"]["step"] == 4
        assert trainer.session.jobs.wait(job["id"], 120).status == "done"
        nodes = {c["name"]: c for c in http.get("/api/checkpoints").json()}
        kept = nodes["autosave before Smoke"]
        assert kept["step"] == 4 and {t["name"] for t in kept["tasks"]} == {"reconstruction_task", "digit"}
        assert http.get("/api/state").json()["unsaved"] is False  # the recipe saved its own branches

        engine.train(3)
        on = http.get("/api/state").json()["parent_checkpoint"]  # the recipe's last branch
        loaded = http.post(f"/api/checkpoints/{nodes['smoke_base']['id']}/load").json()
        assert loaded["autosaved"]["name"] == "autosave before load smoke_base"
        assert loaded["autosaved"]["parent"] == on and loaded["step"] == 30
        again = http.post(f"/api/checkpoints/{kept['id']}/load").json()  # nothing unsaved now
        assert again["autosaved"] is None and again["step"] == 4
        assert http.get("/api/state").json()["autosaved"] is None


def test_a_recipe_started_while_training_runs_keeps_it_in_one_autosave(live_trainer):
    """The recipe stops the live training before it saves it: one checkpoint, not one per step that
    slipped in between the job's autosave and the recipe's."""
    engine = live_trainer.session.engine
    with live_trainer.client() as http:
        engine.train(3)  # unsaved steps, then training that goes on until something stops it
        engine.start()
        job = http.post("/api/recipes/smoke/run", json={}).json()
        assert live_trainer.session.jobs.wait(job["id"], 120).status == "done"
        autosaves = [c for c in http.get("/api/checkpoints").json() if c["name"] == "autosave before Smoke"]
        assert [c["id"] for c in autosaves] == [job["autosaved"]["id"]]
