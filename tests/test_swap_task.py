"""ThicknessSwapTask on real MNIST digits: the loss reconstructs a redrawn digit from a code whose
thickness slot came from it, so its gradient reaches the decoder and the thickness slot; it is
seeded; it trains live beside other tasks; its recipe branch is registered."""

from __future__ import annotations

import torch

from acc.mnist import load_mnist
from acc.models import build_model
from acc.tasks.swap import ThicknessSwapTask
from tests.conftest import TINY_MODEL


def digits(workspace, n: int = 16) -> torch.Tensor:
    return load_mnist(workspace.mnist_dir, "train").images[:n].float().div(255)


def test_the_swap_loss_reaches_the_decoder_and_the_thickness_slot(workspace):
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    task = ThicknessSwapTask()
    task.bind(model)
    images = digits(workspace)
    loss = task.loss(model(images), {"image": images})
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.decoder[0].weight.grad.abs().sum() > 0
    assert model.slots["thickness"].query.grad.abs().sum() > 0
    # The same seed redraws the same thicknesses: the same loss.
    again = ThicknessSwapTask()
    again.bind(model)
    assert torch.equal(again.loss(model(images), {"image": images}).detach(), loss.detach())
    other = ThicknessSwapTask(seed=1)
    other.bind(model)
    assert not torch.equal(other.loss(model(images), {"image": images}).detach(), loss.detach())


def test_the_swap_task_trains_live_and_its_recipe_is_registered(session):
    engine = session.engine
    engine.add_task("ReconstructionTask")
    engine.train(2)
    engine.add_task("ThicknessSwapTask", name="swap")
    engine.train(2)
    swap = next(t for t in engine.state()["tasks"] if t["name"] == "swap")
    assert swap["enabled"] and swap["error"] is None and swap["last_loss"] > 0
    assert "CurriculumSwap5k" in session.recipes
