"""Data-parallel training in the engine (M4, mode 2) on two real gloo ranks on the CPU: rank 0 is the
engine of the test, rank 1 a spawned follower process. The ranks stay in step (every tensor equal)
through live changes, a task that fails on one rank fails on both, checkpoints move between one
device and two ranks, and a killed rank leaves training on rank 0 alone."""

from __future__ import annotations

import os
import time

import pytest

from acc.engine.session import Session
from tests.conftest import write_user_tasks

# A user task file: rank 0 must ship its source, since the follower's registry holds nothing.
RANK_ONE_NAN = '''
import torch
import torch.distributed as dist
from acc.tasks.reconstruction import ReconstructionTask


class RankOneNan(ReconstructionTask):
    """Reconstruction whose loss is NaN on rank 1 only."""

    def loss(self, out, batch):
        loss = super().loss(out, batch)
        return loss * float("nan") if dist.is_initialized() and dist.get_rank() == 1 else loss
'''


def in_step(engine) -> dict:
    """Every rank's fingerprints, asserted equal; returns rank 0's."""
    prints = engine.rank_fingerprints()
    assert len(prints) == engine.ranks.world
    assert all(p == prints[0] for p in prints[1:]), prints
    return prints[0]


@pytest.fixture
def two_ranks(workspace, tiny_config):
    write_user_tasks(workspace, {"rank_one_nan.py": RANK_ONE_NAN})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        session.engine.add_task("ReconstructionTask", name="recon")
        roles = session.engine.set_ranks(2)
        assert (roles["mode"], roles["ranks"]) == ("ddp", 2)
        yield session.engine


def test_two_ranks_stay_in_step_through_live_changes(two_ranks):
    engine = two_ranks
    start = in_step(engine)
    engine.train(3)
    trained = in_step(engine)
    assert trained["model"] != start["model"]
    engine.add_task("ClassificationTask", name="digit", latent="digit")
    engine.update_task("recon", weight=0.5)
    engine.set_lr(5e-4)
    engine.train(3)
    assert set(in_step(engine)["tasks"]) == {"digit"}
    engine.update_task("digit", enabled=False)
    engine.train(2)
    in_step(engine)
    engine.remove_task("digit")
    engine.train(2)
    assert in_step(engine)["tasks"] == {}
    state = engine.state()
    assert state["step"] == 10
    assert engine.set_ranks(1)["mode"] == "single"
    engine.train(1)
    assert engine.rank_fingerprints()[0] == engine.fingerprints()


def test_a_loss_that_fails_on_one_rank_disables_the_task_on_every_rank(two_ranks):
    engine = two_ranks
    engine.add_task("RankOneNan", name="flaky")
    engine.train(2)  # the first step disables it everywhere; the next ones train without it
    flaky = next(t for t in engine.state()["tasks"] if t["name"] == "flaky")
    assert not flaky["enabled"] and "on rank 1" in flaky["error"] and "non-finite loss" in flaky["error"]
    assert engine.state()["step"] == 2
    in_step(engine)


def test_checkpoints_move_between_one_device_and_two_ranks(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        engine.add_task("ClassificationTask", name="digit", latent="digit")
        engine.train(4)
        alone = engine.save_checkpoint("alone")
        alone_prints, alone_eval = engine.fingerprints(), engine.evaluate()

        engine.set_ranks(2)
        engine.load_checkpoint(alone["id"])
        assert in_step(engine) == alone_prints and engine.evaluate() == alone_eval
        engine.train(3)
        ranked = engine.save_checkpoint("on two ranks")
        ranked_prints, ranked_eval = in_step(engine), engine.evaluate()

        engine.set_ranks(1)
        engine.load_checkpoint(alone["id"])
        engine.load_checkpoint(ranked["id"])
        assert engine.fingerprints() == ranked_prints and engine.evaluate() == ranked_eval
        engine.train(1)


def test_a_killed_rank_leaves_training_on_rank_0_alone(two_ranks):
    engine = two_ranks
    errors = []
    engine.subscribe(lambda event: errors.append(event["message"]) if event["type"] == "error" else None)
    engine.start()  # until stopped
    deadline = time.monotonic() + 60
    while engine.state()["step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    engine._rank_processes[0].kill()
    while engine.roles()["mode"] != "single" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.roles()["mode"] == "single" and engine.state()["status"] == "paused"
    assert any("data-parallel training on 2 ranks stopped" in e for e in errors), errors
    step = engine.state()["step"]
    engine.stop()
    assert engine.train(2)["step"] == step + 2  # rank 0 goes on, alone
    # A new job after the broken one; its rank killed while idle, then back to one device at once.
    assert engine.set_ranks(2)["ranks"] == 2
    engine.train(1)
    in_step(engine)
    engine._rank_processes[0].kill()
    engine._rank_processes[0].join(10)
    assert engine.set_ranks(1)["mode"] == "single"
    assert engine.train(1)["step"] == step + 4


def test_ranks_that_cannot_be_refused_and_change_nothing(session):
    engine = session.engine
    for world in (0, -1, True, 2.5, (os.cpu_count() or 1) + 1):
        with pytest.raises(ValueError):
            engine.set_ranks(world)
    assert engine.roles()["mode"] == "single" and engine.ranks.single
