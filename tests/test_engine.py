"""The engine: training lowers the loss, live commands, failing user code, datasets, events."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
from torch import nn

from acc.datasets import Dataset
from acc.engine import Engine, EngineConfig
from acc.engine.session import Session
from acc.mnist import load_mnist
from acc.models import MODELS, register_model
from tests.conftest import write_user_tasks

EXPLODING = '''
import torch.nn.functional as F
from acc.tasks.base import Task

class ExplodingTask(Task):
    """Fine for a few steps, then raises."""
    calls = 0

    def loss(self, out, batch):
        type(self).calls += 1
        if type(self).calls > 5:
            raise RuntimeError("boom from user code")
        return F.mse_loss(self.head(self.features(out)).squeeze(-1), batch["image"].mean(dim=(1, 2, 3)))


class NanTask(Task):
    """Returns a NaN loss."""
    def loss(self, out, batch):
        return self.head(self.features(out)).sum() * float("nan")
'''


def test_two_hundred_steps_lower_reconstruction_loss(session):
    engine = session.engine
    engine.add_task("ReconstructionTask")
    before = engine.evaluate()["reconstruction_task"]
    engine.train(200, timeout=300)
    after = engine.evaluate()["reconstruction_task"]
    assert engine.step == 200
    assert after["loss"] < 0.8 * before["loss"]
    assert after["mse"] < before["mse"] and after["psnr"] > before["psnr"]
    session.store.flush()
    series = session.store.query_metrics(engine.run_id, ["loss/reconstruction_task"], max_points=10_000)
    losses = series["loss/reconstruction_task"]["value"]
    assert len(losses) == 200
    assert sum(losses[-20:]) < 0.8 * sum(losses[:20])


def test_commands_are_acknowledged_when_applied(session):
    engine = session.engine
    state = engine.add_task("ClassificationTask", name="digit", latent="digit")
    assert state.name == "digit" and state.enabled and state.latent == "digit"
    groups = len(engine.optimizer.param_groups)
    assert engine.update_task("digit", weight=0.25).weight == 0.25
    assert engine.update_task("digit", enabled=False).enabled is False
    engine.update_task("digit", enabled=True)
    engine.set_lr(5e-4)
    assert all(g["lr"] == 5e-4 for g in engine.optimizer.param_groups)

    engine.start()  # no step limit
    engine.pause()
    paused_at = engine.step
    engine.set_lr(1e-3)  # a full round trip through the queue: no step may run while paused
    assert engine.state()["status"] == "paused" and engine.step == paused_at
    engine.resume()
    engine.stop()
    assert engine.state()["status"] == "idle"

    engine.remove_task("digit")
    assert len(engine.optimizer.param_groups) == groups - 1
    assert engine.state()["tasks"] == []


@pytest.mark.parametrize("kwargs, error", [
    ({"type": "NoSuchTask"}, KeyError),
    ({"type": "ReconstructionTask", "weight": -1.0}, ValueError),
    ({"type": "ReconstructionTask", "weight": float("nan")}, ValueError),
    ({"type": "ReconstructionTask", "latent": "nope"}, ValueError),
    ({"type": "ReconstructionTask", "name": "../etc"}, ValueError),
    ({"type": "ReconstructionTask", "dataset": "missing_set"}, KeyError),
    ({"type": "RegressionTask"}, ValueError),  # required parameter `target`
    ({"type": "RegressionTask", "target": "thickness"}, ValueError),  # mnist has no such target
    ({"type": "ReconstructionTask", "name": ".."}, ValueError),  # no letter or digit: no name in a URL
])
def test_bad_commands_fail_clearly_and_change_nothing(session, kwargs, error):
    session.engine.add_task("ReconstructionTask", name="base")
    before = session.engine.state()
    with pytest.raises(error):
        session.engine.add_task(**kwargs)
    assert session.engine.state() == before


def test_duplicate_names_and_bad_updates_are_refused(session):
    engine = session.engine
    engine.add_task("ReconstructionTask")
    with pytest.raises(ValueError, match="already exists"):
        engine.add_task("ReconstructionTask")
    with pytest.raises(KeyError):
        engine.update_task("nope", weight=1.0)
    with pytest.raises(ValueError):
        engine.update_task("reconstruction_task", weight=1e9)
    with pytest.raises(ValueError):
        engine.set_lr(-1)


def test_a_task_that_raises_is_disabled_and_training_continues(workspace, tiny_config):
    write_user_tasks(workspace, {"exploding.py": EXPLODING})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        engine.add_task("ExplodingTask", latent="digit")
        engine.add_task("NanTask", latent="slant")
        errors = []
        engine.subscribe(lambda e: errors.append(e) if e["type"] == "error" else None)
        engine.train(30, timeout=120)
        tasks = {t["name"]: t for t in engine.state()["tasks"]}
        assert engine.step == 30
        assert tasks["reconstruction_task"]["enabled"] and tasks["reconstruction_task"]["error"] is None
        assert not tasks["exploding_task"]["enabled"]
        assert "boom from user code" in tasks["exploding_task"]["error"]
        assert "exploding.py" in tasks["exploding_task"]["error"]
        assert not tasks["nan_task"]["enabled"] and "non-finite loss" in tasks["nan_task"]["error"]
        assert {e["task"] for e in errors} == {"exploding_task", "nan_task"}
        assert all(torch.isfinite(p).all() for p in engine.model.parameters())
        session.store.flush()
        kinds = [e["kind"] for e in session.store.events(engine.run_id)]
        assert kinds.count("error") == 2


def test_each_dataset_gets_one_batch_and_one_forward_per_step(session):
    digits = load_mnist(session.workspace.mnist_dir)
    part = digits.subset(torch.arange(600))
    brightness = part.images.float().mean(dim=(1, 2, 3)) / 255
    Dataset(part.images, part.labels, {"brightness": brightness}, {"source": "test"}).save(
        session.workspace.data_dir / "bright.pt")
    engine = session.engine
    engine.add_task("ReconstructionTask")
    engine.add_task("ClassificationTask", name="digit", latent="digit")
    engine.add_task("RegressionTask", name="bright", dataset="bright", target="brightness", latent="style")
    calls = []
    engine.model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    engine.train(40, timeout=120)
    assert len(calls) == 80  # two datasets: mnist and bright
    results = engine.evaluate()
    assert set(results) == {"reconstruction_task", "digit", "bright"}
    assert 0 <= results["digit"]["accuracy"] <= 1 and "mae" in results["bright"] and "r2" in results["bright"]
    session.store.flush()
    keys = session.store.metric_keys(engine.run_id)
    assert {"eval/bright/mae", "eval/digit/accuracy", "loss/bright", "loss/total", "samples_per_s"} <= set(keys)
    assert session.store.evals(engine.run_id)[0]["results"]["bright"]["mae"] == results["bright"]["mae"]


def test_metrics_events_reach_subscribers(session):
    engine = session.engine
    engine.add_task("ReconstructionTask")
    seen, done = [], threading.Event()

    def on_event(event):
        if event["type"] == "metrics":
            seen.append(event["step"])
            if event["step"] == 10:
                done.set()

    engine.subscribe(on_event)
    engine.train(10, timeout=60)
    assert done.wait(5) and seen == list(range(1, 11))
    assert "loss/reconstruction_task" in engine.recent[-1][1]


@register_model("test_mlp_ae")
class TinyMLPAutoencoder(nn.Module):
    """A third model, written here: anything that follows the protocol trains."""

    recon_logits = False

    def __init__(self, latent_dim: int = 6):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 784), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))
        self.latent_slices = {"a": slice(0, 3), "b": slice(3, latent_dim), "all": slice(0, latent_dim)}

    def forward(self, x):
        latent = self.encoder(x)
        return {"latent": latent, "recon": self.decoder(latent)}

    def config(self):
        return {"name": "test_mlp_ae", "latent_dim": self.latent_dim}


def test_a_third_model_trains_through_the_same_engine(workspace, tiny_config):
    assert "test_mlp_ae" in MODELS
    tiny_config.model = {"name": "test_mlp_ae"}
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        with pytest.warns(UserWarning, match="falls back"):
            engine.add_task("ClassificationTask", latent="b")
            before = engine.evaluate()
            engine.train(60, timeout=120)
        after = engine.evaluate()
        assert after["reconstruction_task"]["loss"] < before["reconstruction_task"]["loss"]
        assert after["classification_task"]["loss"] < before["classification_task"]["loss"]
        checkpoint = engine.save_checkpoint("mlp")
        engine.load_checkpoint(checkpoint["id"])
        assert engine.state()["model"] == {"name": "test_mlp_ae", "latent_dim": 6}


def test_engine_accepts_a_model_instance(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = Engine(session.workspace, session.store, session.tasks, EngineConfig(device="cpu", batch_size=16),
                        model=TinyMLPAutoencoder(latent_dim=4))
        try:
            engine.add_task("ReconstructionTask")
            assert engine.train(3)["step"] == 3
        finally:
            engine.close()


PROBE = '''
import torch.nn.functional as F
from acc.tasks.base import Task

class BrightnessProbe(Task):
    """Version {version}."""
    isolation = "probe"

    def loss(self, out, batch):
        return F.mse_loss(self.head(self.features(out)).squeeze(-1), batch["image"].mean(dim=(1, 2, 3)))
'''


def test_running_tasks_turn_stale_when_their_file_changes_and_keep_training(workspace, tiny_config):
    folder = write_user_tasks(workspace, {"brightness.py": PROBE.format(version=1)})
    with Session.open(workspace.root, tiny_config, watch=True) as session:
        engine = session.engine
        engine.add_task("BrightnessProbe")
        stale = threading.Event()
        engine.subscribe(lambda e: stale.set() if e.get("kind") == "task_stale" else None)
        (folder / "brightness.py").write_text(PROBE.format(version=2))
        assert stale.wait(5), "no stale event within 5 s of the save"
        task = engine.state()["tasks"][0]
        assert task["stale"] and task["enabled"]
        assert session.tasks.get("BrightnessProbe").__doc__ == "Version 2."
        assert engine.train(3)["step"] == 3  # the running instance keeps its class
        engine.add_task("BrightnessProbe", name="fresh")
        assert [t["stale"] for t in engine.state()["tasks"]] == [True, False]


DESIGN_DUMMY_TASK = '''import torch.nn.functional as F
from acc.tasks.base import Task

class DummyTask(Task):
    """Predict mean pixel intensity from the whole latent."""
    def loss(self, out, batch):
        pred = self.head(self.features(out)).squeeze(-1)
        return F.mse_loss(pred, batch["image"].mean(dim=(1, 2, 3)))
'''


def test_the_design_dummy_task_works_unchanged(workspace, tiny_config):
    write_user_tasks(workspace, {"dummy_task.py": DESIGN_DUMMY_TASK})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        docs = {item["name"]: item["doc"] for item in session.tasks.describe()}
        assert docs["DummyTask"] == "Predict mean pixel intensity from the whole latent."
        engine = session.engine
        engine.add_task("ReconstructionTask")
        assert engine.add_task("DummyTask").name == "dummy_task"
        engine.train(20)
        session.store.flush()
        values = session.store.query_metrics(engine.run_id, ["loss/dummy_task"])["loss/dummy_task"]["value"]
        assert len(values) == 20 and values[-1] < values[0]


def test_reconstructions_show_digits_of_many_classes(session):
    session.engine.add_task("ReconstructionTask")
    images, recon = session.engine.reconstructions(8)
    assert images.shape == recon.shape == (8, 1, 28, 28) and 0 <= recon.min() and recon.max() <= 1
    validation = session.engine.data["mnist"].validation
    shown = {int(validation.labels[i]) for i in range(len(validation))
             if any(torch.equal(validation.batch(torch.tensor([i]))["image"][0], image) for image in images)}
    assert len(shown) >= 5  # the bundled digits are stored in class order: not eight zeros


@pytest.mark.parametrize("order", list(itertools.permutations(["a", "b", "c"])))
def test_tasks_with_heads_are_removed_in_any_order_whole(session, order):
    """Removing a param group by equality compared dicts holding tensors: a 500 that half-applied."""
    engine = session.engine
    engine.add_task("ReconstructionTask")
    for name in ("a", "b", "c"):
        engine.add_task("ClassificationTask", name=name, latent="digit")
    engine.train(2)  # every head has optimizer state now
    for removed, name in enumerate(order, start=1):
        engine.remove_task(name)
        names = {g["name"] for g in engine.optimizer.param_groups}
        assert names == {"model"} | {f"task:{n}" for n in order[removed:]}  # reconstruction has no head
        heads = {p for g in engine.optimizer.param_groups for p in g["params"]}
        assert set(engine.optimizer.state) <= heads  # no state left for a removed head
        assert name not in {t["name"] for t in engine.state()["tasks"]}
        engine.train(1)
    engine.add_task("ClassificationTask", name=order[0], latent="digit")  # a removed name is free again
    assert engine.train(2)["step"] == 2 + 3 + 2


LOCATED = '''
import torch
from acc.tasks.base import Task

class ShapeMistake(Task):
    """Multiplies mismatched shapes: torch raises deep inside itself."""
    def loss(self, out, batch):
        wrong = torch.ones(3, 5)
        return (self.head(self.features(out)) @ wrong).mean()  # the user's line
'''


def test_an_error_in_user_code_names_the_users_line_not_torchs(workspace, tiny_config):
    folder = write_user_tasks(workspace, {"located.py": LOCATED})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        engine.add_task("ShapeMistake")
        engine.train(2)
        error = {t["name"]: t for t in engine.state()["tasks"]}["shape_mistake"]["error"]
        line = LOCATED.splitlines().index("        return (self.head(self.features(out)) @ wrong).mean()  # the user's line") + 1
        assert f"({folder / 'located.py'}:{line})" in error, error
        assert "torch" not in error.split("(")[-1] and "acc/engine" not in error
