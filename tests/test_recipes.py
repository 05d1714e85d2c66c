"""Recipes: the context operations, the checkpoint tree, fork isolation, determinism, resuming
after a crash, failing and cancelled recipes run as jobs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from acc.engine.checkpoint import read_checkpoint
from acc.engine.jobs import JobConflict, JobManager
from acc.engine.recipes import run_recipe, start_recipe_job
from acc.engine.session import Session
from tests.conftest import write_user_files

USER_RECIPES = '''
from acc.recipes.base import Recipe

MODEL = dict(factors=["digit", "thickness", "slant", "style"], slot_dim=4, channels=16, hidden=16)


class OnlyRecon(Recipe):
    """The base and the first branch of Smoke, without the second branch."""
    def run(self, r):
        r.model("factor_slot", **MODEL)
        r.add_task("ReconstructionTask")
        r.train(steps=30)
        base = r.checkpoint("smoke_base")
        with r.fork(base, "smoke_recon"):
            r.train(steps=20)


class Steering(Recipe):
    """Every context operation once."""
    def run(self, r):
        r.model("factor_slot", **MODEL)
        r.add_task("ReconstructionTask")
        r.add_task("ClassificationTask", name="digit", latent=r.dataset("mnist") and "digit")
        r.set_weight("digit", 0.25)
        r.set_lr(5e-4)
        r.train(steps=10)
        first = r.checkpoint("first")
        r.remove_task("digit")
        r.train(steps=10)
        self.results = r.evaluate()
        r.checkpoint("second")
        r.load(first)
        r.train(steps=5)
        r.checkpoint("from_first")


class Failing(Recipe):
    """Saves one checkpoint, then fails."""
    def run(self, r):
        r.model("factor_slot", **MODEL)
        r.add_task("ReconstructionTask")
        r.train(steps=5)
        r.checkpoint("before_failure")
        raise RuntimeError("the recipe broke here")


class BadTask(Recipe):
    """Asks for a task type that does not exist; the engine finds out only when it trains."""
    def run(self, r):
        r.model("factor_slot", **MODEL)
        r.add_task("NoSuchTask")  # BAD LINE
        r.train(steps=5)


class Long(Recipe):
    """Long enough to be cancelled."""
    def run(self, r):
        r.model("factor_slot", **MODEL)
        r.add_task("ReconstructionTask")
        r.train(steps=100_000)
'''


@pytest.fixture
def recipe_session(workspace, tiny_config):
    write_user_files(workspace, "recipes", {"user_recipes.py": USER_RECIPES})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        yield session


def tree(store):
    return {row["name"]: row for row in store.checkpoints()}


def test_smoke_grows_a_tree_in_the_store(recipe_session):
    result = run_recipe(recipe_session.engine, recipe_session.recipes, "smoke")
    nodes = tree(recipe_session.store)
    assert set(nodes) == {"smoke_base", "smoke_recon", "smoke_digit"} and result.steps == 70
    base = nodes["smoke_base"]
    assert nodes["smoke_recon"]["parent"] == base["id"] == nodes["smoke_digit"]["parent"]
    assert (base["step"], nodes["smoke_recon"]["step"], nodes["smoke_digit"]["step"]) == (30, 50, 50)
    assert nodes["smoke_digit"]["meta"]["branch"] == "smoke_digit"
    assert [t["name"] for t in nodes["smoke_digit"]["meta"]["tasks"]] == ["reconstruction_task", "digit"]
    assert [t["name"] for t in nodes["smoke_recon"]["meta"]["tasks"]] == ["reconstruction_task"]
    assert {row["meta"]["recipe"]["version"] for row in nodes.values()} == {result.version}


def test_every_context_operation_applies(recipe_session):
    run_recipe(recipe_session.engine, recipe_session.recipes, "Steering")
    nodes = tree(recipe_session.store)
    first, second, again = nodes["first"]["meta"], nodes["second"]["meta"], nodes["from_first"]["meta"]
    assert {t["name"]: t["weight"] for t in first["tasks"]} == {"reconstruction_task": 1.0, "digit": 0.25}
    assert first["optimizer"]["lr"] == 5e-4 and first["step"] == 10
    assert [t["name"] for t in second["tasks"]] == ["reconstruction_task"] and second["step"] == 20
    assert "eval/reconstruction_task/mse" in second["metrics"]
    assert again["parent"] == nodes["first"]["id"] and again["step"] == 15
    assert [t["name"] for t in again["tasks"]] == ["reconstruction_task", "digit"]


def test_a_fork_never_touches_its_sibling_or_parent(recipe_session, workspace, tiny_config, tmp_path):
    run_recipe(recipe_session.engine, recipe_session.recipes, "smoke")
    nodes = tree(recipe_session.store)
    # The same base and first branch, run alone in another workspace, give identical weights:
    # the sibling branch (which added a task) changed nothing in them.
    other = type(workspace).resolve(tmp_path / "alone")
    (other.root / "mnist").symlink_to(workspace.mnist_dir.resolve(), target_is_directory=True)
    write_user_files(other, "recipes", {"user_recipes.py": USER_RECIPES})
    with Session.open(other.root, tiny_config, watch=False) as alone:
        run_recipe(alone.engine, alone.recipes, "OnlyRecon")
        alone_nodes = tree(alone.store)
    for name in ("smoke_base", "smoke_recon"):
        ours = read_checkpoint(nodes[name]["path"]).weights
        theirs = read_checkpoint(alone_nodes[name]["path"]).weights
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    digit = read_checkpoint(nodes["smoke_digit"]["path"]).weights
    recon = read_checkpoint(nodes["smoke_recon"]["path"]).weights
    assert not torch.equal(digit["model.slots.digit.query"], recon["model.slots.digit.query"])


def test_the_same_recipe_and_seed_give_the_same_metrics(recipe_session, tiny_config, workspace, tmp_path):
    """Bitwise, under the same numerics, which each checkpoint records (another thread count or
    instruction set parts the runs from the first step: README, "Same seed, same result?")."""
    def metrics(session):
        run_recipe(session.engine, session.recipes, "smoke")
        session.store.flush()
        evaluation = session.engine.evaluate()
        losses = [session.store.query_metrics(run["id"], ["loss/total"])["loss/total"]["value"]
                  for run in reversed(session.store.runs())]
        numerics = [row["meta"]["trained_under"] for row in session.store.checkpoints()]
        assert len(numerics) == 3 and all(len(entries) == 1 for entries in numerics)  # each trained, one setting
        return evaluation, losses, numerics

    first = metrics(recipe_session)
    other = type(workspace).resolve(tmp_path / "again")
    (other.root / "mnist").symlink_to(workspace.mnist_dir.resolve(), target_is_directory=True)
    with Session.open(other.root, tiny_config, watch=False) as session:
        second = metrics(session)
    assert first == second
    assert sum(len(series) for series in first[1]) == 70


def test_running_again_after_a_crash_continues_from_the_last_checkpoint(workspace, tiny_config, tmp_path):
    script = textwrap.dedent(f"""
        import os
        from acc.engine import EngineConfig
        from acc.engine.recipes import run_recipe
        from acc.engine.session import Session
        session = Session.open({str(workspace.root)!r}, EngineConfig(**{tiny_config.__dict__!r}), watch=False)
        def die(done, total):
            if done >= 40:  # after smoke_base (30 steps), inside the first fork
                session.store.flush()
                os._exit(3)
        run_recipe(session.engine, session.recipes, "smoke", on_progress=die)
    """)
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 3, crashed.stderr
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        assert set(tree(session.store)) == {"smoke_base"}
        trained = []
        session.engine.subscribe(lambda e: trained.append(e["step"]) if e["type"] == "metrics" else None)
        result = run_recipe(session.engine, session.recipes, "smoke")
        assert result.skipped == ["smoke_base"] and len(trained) == 40  # only the two forks trained
        resumed = tree(session.store)
    reference_ws = type(workspace).resolve(tmp_path / "reference")
    (reference_ws.root / "mnist").symlink_to(workspace.mnist_dir.resolve(), target_is_directory=True)
    with Session.open(reference_ws.root, tiny_config, watch=False) as reference:
        run_recipe(reference.engine, reference.recipes, "smoke")
        clean = tree(reference.store)
    for name in ("smoke_recon", "smoke_digit"):
        assert resumed[name]["parent"] == resumed["smoke_base"]["id"]
        ours, theirs = read_checkpoint(resumed[name]["path"]).weights, read_checkpoint(clean[name]["path"]).weights
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_failing_recipe_ends_its_job_with_the_error_and_keeps_its_checkpoints(recipe_session):
    jobs = JobManager()
    job = jobs.wait(start_recipe_job(jobs, recipe_session.engine, recipe_session.recipes, "Failing").id, 120)
    assert job.status == "failed"
    assert "the recipe broke here" in job.error and "user_recipes.py:" in job.error
    assert set(tree(recipe_session.store)) == {"before_failure"}
    assert recipe_session.engine.train(2)["step"] == 7  # the engine still serves
    assert jobs.engine_owner() is None


def test_an_error_applying_an_operation_names_the_recipe_line_that_asked_for_it(recipe_session):
    jobs = JobManager()
    job = jobs.wait(start_recipe_job(jobs, recipe_session.engine, recipe_session.recipes, "BadTask").id, 120)
    bad_line = USER_RECIPES.splitlines().index('        r.add_task("NoSuchTask")  # BAD LINE') + 1
    assert job.status == "failed" and "NoSuchTask" in job.error
    assert f"user_recipes.py:{bad_line} (add_task)" in job.error


def test_each_branch_trains_in_a_run_named_after_it(recipe_session):
    run_recipe(recipe_session.engine, recipe_session.recipes, "smoke")
    runs = {run["id"]: run["name"] for run in recipe_session.store.runs()}
    nodes = tree(recipe_session.store)
    assert {name: runs[row["run_id"]] for name, row in nodes.items()} == {
        "smoke_base": "Smoke", "smoke_recon": "smoke_recon", "smoke_digit": "smoke_digit"}


def test_one_job_drives_the_engine_and_cancel_stops_it(recipe_session):
    jobs = JobManager()
    engine = recipe_session.engine
    job = start_recipe_job(jobs, engine, recipe_session.recipes, "Long")
    with pytest.raises(JobConflict, match="driving the engine"):
        start_recipe_job(jobs, engine, recipe_session.recipes, "smoke")
    assert jobs.engine_owner() is job
    jobs.cancel(job.id)
    assert jobs.wait(job.id, 60).status == "cancelled" and "cancelled" in job.error
    assert jobs.engine_owner() is None and engine.step < 100_000
    with pytest.raises(KeyError):
        start_recipe_job(jobs, engine, recipe_session.recipes, "NoSuchRecipe")
    with pytest.raises(ValueError):
        start_recipe_job(jobs, engine, recipe_session.recipes, "smoke", {"unknown": 1})
