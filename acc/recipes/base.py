"""The Recipe base class: a scripted experiment that grows a tree of checkpoints (DESIGN §3).

    class Smoke(Recipe):
        \"\"\"A few steps of reconstruction, then one checkpoint.\"\"\"
        def run(self, r):
            r.model("factor_slot")
            r.add_task("ReconstructionTask")
            r.train(steps=20)
            r.checkpoint("smoke")
"""

from __future__ import annotations

from typing import Any


class Recipe:
    def run(self, r: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement run(r)")
