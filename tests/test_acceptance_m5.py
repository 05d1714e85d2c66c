"""The M5 acceptance pipeline (`acc.test_m5`) end to end on a shortened recipe pair: two recipes
run through the API as jobs, each checkpoint's factoring job, report and traversal figures, the
comparison table and the side-by-side figure. A few dozen steps of a tiny model cannot reach the
M5 result, so this checks that every step of the pipeline works, not the comparison's outcome."""

from __future__ import annotations

from PIL import Image

from acc import test_m5
from tests.conftest import write_user_files

# The shortened pair, as a user recipe file in the workspace: the same shape as MnistOnly5k and
# Curriculum5k (one base, two forks from it, thickness and slant on generated data), tiny and short.
SHORT_RECIPES = '''from acc.recipes.base import Recipe

FACTORS = ["digit", "thickness", "slant", "style"]


class ShortBase(Recipe):
    """A tiny model's reconstruction base."""
    abstract = True

    def base(self, r):
        r.model("factor_slot", factors=FACTORS, slot_dim=4, channels=16, hidden=16)
        r.add_task("ReconstructionTask")
        r.train(steps=20)
        return r.checkpoint("short_base")


class ShortMnistOnly(ShortBase):
    """Reconstruction only."""

    def run(self, r):
        with r.fork(self.base(r), "short_mnist_only"):
            r.train(steps=20)


class ShortCurriculum(ShortBase):
    """Thickness and slant regression on their own slots."""

    def run(self, r):
        thickness = r.dataset("short_thickness", generator="ThicknessGenerator", n=64, low=1.5, high=5.5)
        slant = r.dataset("short_slant", generator="SlantGenerator", n=64, low=-0.6, high=0.6)
        with r.fork(self.base(r), "short_curriculum"):
            r.add_task("RegressionTask", name="thickness", latent="thickness", dataset=thickness, target="thickness")
            r.add_task("RegressionTask", name="slant", latent="slant", dataset=slant, target="slant")
            r.add_task("ReconstructionTask", name="recon_thickness", dataset=thickness, weight=0.5)
            r.add_task("ReconstructionTask", name="recon_slant", dataset=slant, weight=0.5)
            r.train(steps=20)


class ShortSwap(ShortBase):
    """A third branch of the same base: thickness swaps."""

    def run(self, r):
        with r.fork(self.base(r), "short_swap"):
            r.add_task("ThicknessSwapTask", name="swap")
            r.train(steps=20)
'''
ARMS = (test_m5.Arm("short_mnist_only", "short_mnist_only"), test_m5.Arm("short_curriculum", "short_curriculum"))


def test_the_m5_pipeline_runs_end_to_end_on_a_short_recipe_pair(workspace, trainer_factory, tmp_path, capsys):
    write_user_files(workspace, "recipes", {"short_m5.py": SHORT_RECIPES})
    trainer = trainer_factory(tasks=[])
    result = test_m5.run(trainer.base_url, trainer.token, arms=ARMS, out=tmp_path / "m5",
                         recipe_timeout=300, factoring_timeout=300, also=[test_m5.Arm("short_swap", "short_swap")])
    printed = capsys.readouterr().out

    pipeline = [(name, ok, detail) for name, ok, detail in result.steps.steps
                if not name.startswith("comparison:")]  # the M5 result itself: not expected here
    assert all(ok for _, ok, _ in pipeline), [step for step in pipeline if not step[1]]
    assert len(pipeline) == 2 + 4 * 2 + 2  # reachable, listed; per arm recipe/factoring/report/figures; parent, table
    assert len(result.steps.steps) == len(pipeline) + 3  # the three comparison steps were checked too

    # The --also branch: run and evaluated beside the pair, compared with the baseline outside the verdict.
    also = result.also.steps
    assert [name for name, _, _ in also[:4]] == [step[0].replace("short_curriculum", "short_swap")
                                                 for step in pipeline[6:10]]
    assert all(ok for _, ok, _ in also[:5]), also  # its recipe, factoring, report, figures; same parent
    assert len(also) == 5 + 3 and all(name.startswith("comparison: ") and "short_swap" in name for name, _, _ in also[5:])
    assert "also PASS  short_swap: recipe run" in printed
    assert result.code == (1 if result.steps.failed else 0)  # the also arm never enters the verdict

    base, curriculum, swap = result.outcomes
    assert swap.checkpoint["parent"] == base.checkpoint["parent"]
    assert base.checkpoint["parent"] == curriculum.checkpoint["parent"]  # one base, two forks
    assert "short_base" in curriculum.recipe_job["result"]["skipped"]  # the second run reused it
    for outcome in result.outcomes:
        assert outcome.report["step"] == 40 and 0 <= outcome.report["ufr"] <= 1
        assert set(outcome.figures) == {"digit", "thickness", "slant", "style"}
        grid = Image.open(outcome.figures["thickness"])
        assert grid.width > 9 * 28 and grid.height > 5 * 28  # 5 seeds x 9 steps
    assert curriculum.report["concepts"]["thickness"]["slot"] == "thickness"

    # The table, printed: both checkpoints, UFR, per concept I/tau/L/UFR, traversal rho/range/class_kept.
    assert result.table in printed
    header, *rows = result.table.splitlines()
    assert "short_mnist_only" in header and "short_curriculum" in header and "short_swap" in header
    labels = [row[:34].strip() for row in rows]
    for label in ("UFR", "thickness: I", "thickness: tau", "thickness: L", "thickness: UFR", "slant: UFR",
                  "thickness traversal: rho", "thickness traversal: range", "thickness traversal: class_kept",
                  "UFR: standard error (probe seeds)", "thickness traversal: rho_se"):
        assert label in labels, label
    side = Image.open(tmp_path / "m5" / "thickness-side-by-side.png")
    assert side.height > 3 * 5 * 28  # three branches' grids
    lines = test_m5.summary([result]).splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["short_mnist_only", "short_curriculum", "short_swap"]
    assert ("ALL PASS" if result.code == 0 else "FAILED") in printed and "PASS  trainer reachable" in printed
