"""The Generator base class: a synthetic dataset with known factors (DESIGN §3).

    class SymmetryGenerator(Generator):
        \"\"\"Mirror-symmetric blobs; target `symmetry` in [0, 1].\"\"\"
        class Params(BaseModel):
            noise: float = Field(0.1, ge=0, le=1)
        def generate(self, n, rng, params):
            ...  # returns images uint8 [n, 28, 28] and {target name: float array [n]}

`Params` (pydantic) gives the dashboard its form and the API its validation.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict


class Generator:
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def generate(self, n: int, rng: np.random.Generator, params: BaseModel
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError(f"{type(self).__name__} must implement generate(n, rng, params)")

    @classmethod
    def params_schema(cls) -> dict:
        return {"schema": cls.Params.model_json_schema()}
