"""Built-in recipes: `Smoke` (seconds on CPU) and the M5 pair grown from one common base.

`MnistOnly5k` and `Curriculum5k` share the checkpoint `base_1k` (same file, same seed: the second
one to run loads it instead of training it again), then fork from it, so that the two branches
differ in one variable only: the thickness and slant tasks on generated data.
"""

from acc.recipes.base import Recipe

FACTORS = ["digit", "thickness", "slant", "style"]


class Smoke(Recipe):
    """A tiny model, a base checkpoint and two forks from it: a tree in seconds, for tests."""

    def run(self, r):
        r.model("factor_slot", factors=FACTORS, slot_dim=4, channels=16, hidden=16)
        r.add_task("ReconstructionTask")
        r.train(steps=30)
        base = r.checkpoint("smoke_base")
        with r.fork(base, "smoke_recon"):
            r.train(steps=20)
        with r.fork(base, "smoke_digit"):
            r.add_task("ClassificationTask", name="digit", latent="digit")
            r.train(steps=20)


class MnistBase(Recipe):
    """1,000 steps of reconstruction on MNIST: the common parent of the M5 comparison."""

    abstract = True  # not a recipe of its own

    def base(self, r):
        r.model("factor_slot", factors=FACTORS)
        r.add_task("ReconstructionTask")
        r.train(steps=1000)
        return r.checkpoint("base_1k")


class MnistOnly5k(MnistBase):
    """Reconstruction only, 5,000 steps in all: the baseline of the M5 comparison."""

    def run(self, r):
        with r.fork(self.base(r), "mnist_only_5k"):
            r.train(steps=4000)


class Curriculum5k(MnistBase):
    """Same base, then thickness and slant regression on their own slots, on generated data."""

    fork = "curriculum_5k"

    def run(self, r):
        # Generated on the first run (same generator, size, seed and ranges every time), reused after.
        thickness = r.dataset("thickness_5k", generator="ThicknessGenerator", n=5000, low=1.5, high=5.5)
        slant = r.dataset("slant_5k", generator="SlantGenerator", n=5000, low=-0.6, high=0.6)
        with r.fork(self.base(r), self.fork):
            self.curriculum(r, thickness, slant)
            r.train(steps=4000)

    def curriculum(self, r, thickness: str, slant: str):
        r.add_task("RegressionTask", name="thickness", latent="thickness", dataset=thickness, target="thickness")
        r.add_task("RegressionTask", name="slant", latent="slant", dataset=slant, target="slant")
        # The decoder learns the generated images too, or traversals leave the data manifold.
        r.add_task("ReconstructionTask", name="recon_thickness", dataset=thickness, weight=0.5)
        r.add_task("ReconstructionTask", name="recon_slant", dataset=slant, weight=0.5)


class CurriculumSwap5k(Curriculum5k):
    """Curriculum5k plus thickness swaps (ThicknessSwapTask): the decoder must read thickness from
    its slot. A third branch of the same base, beside the M5 pair (which it leaves as they are)."""

    fork = "curriculum_swap_5k"

    def curriculum(self, r, thickness: str, slant: str):
        super().curriculum(r, thickness, slant)
        r.add_task("ThicknessSwapTask", name="swap")
