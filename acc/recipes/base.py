"""The Recipe base class: a scripted experiment that grows a tree of checkpoints (DESIGN §3).

    class Smoke(Recipe):
        \"\"\"A few steps of reconstruction, then one checkpoint.\"\"\"
        def run(self, r):
            r.model("factor_slot")
            r.add_task("ReconstructionTask")
            r.train(steps=20)
            base = r.checkpoint("base")
            with r.fork(base, "more"):      # starts from base's weights, tasks and optimizer
                r.train(steps=20)           # saved as checkpoint "more", a child of "base"

`r` is a `acc.engine.recipes.RecipeContext`. Declare parameters in a nested pydantic `Params`
(like tasks and generators); they arrive as `self.params`. A recipe runs again from where it
stopped: checkpoints that this version of the recipe file already made are loaded, not redone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Recipe:
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, **params: Any) -> None:
        self.params = self.Params.model_validate(params, strict=True)  # `true` is no number

    def run(self, r: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement run(r)")

    @classmethod
    def params_schema(cls) -> dict:
        return {"schema": cls.Params.model_json_schema()}
