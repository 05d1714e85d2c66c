"""The M6 recipe: does growing a trained model by a layer pay off? One base, three forks.

The forks differ in one thing only: the control trains the model as it was; the two others first
grow it at `where`, with a randomly initialised layer (the loss jumps, then recovers) or an
identity one (nothing jumps: the expanded model computes what the base did). Each fork trains the
same number of steps, so their held-out accuracies compare fairly (`python -m acc.test_m6`).
"""

from pydantic import Field

from acc.recipes.base import Recipe


class ExpandDemo(Recipe):
    """M6: a small model trained to a base, then three forks trained the same number of steps from
    it: the control (the model as it was), the model grown at `where` with a randomly initialised
    layer, and the same with an identity (function-preserving) one. Small enough for a CPU."""

    class Params(Recipe.Params):
        base_steps: int = Field(800, ge=1)
        steps: int = Field(800, ge=1, description="steps of each fork after the base")
        where: str = Field("slots:1", description="where the model grows (GET /api/model/layers)")

    def run(self, r):
        p = self.params
        # One hidden layer in each slot's MLP (slot_layers=2), the place `slots:1` grows.
        r.model("factor_slot", factors=["digit", "style"], slot_dim=8, channels=16, hidden=32, slot_layers=2)
        r.add_task("ReconstructionTask")
        # "shared": the digit's gradient reaches the trunk too, so that a small model learns it in minutes.
        r.add_task("ClassificationTask", name="digit", latent="digit", isolation="shared")
        r.train(steps=p.base_steps)
        base = r.checkpoint("expand_base")
        with r.fork(base, "expand_control"):
            r.train(steps=p.steps)
        for init in ("random", "identity"):
            with r.fork(base, f"expand_{init}"):
                r.expand(where=p.where, init=init)
                r.train(steps=p.steps)
