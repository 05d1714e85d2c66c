import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from acc.tasks.base import Task


class RegressionTask(Task):
    """Predict a continuous target of the dataset (e.g. thickness) from a latent group; MAE and R²."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target: str = Field(..., min_length=1, description="name of the dataset target to predict")

    def check_data(self, dataset):
        if self.target not in dataset.targets:
            raise ValueError(f"dataset {self.dataset!r} has no target {self.target!r}; "
                             f"its targets: {', '.join(sorted(dataset.targets)) or 'none'}")

    def _target(self, batch):
        if self.target not in batch["targets"]:
            raise KeyError(f"dataset {self.dataset!r} has no target {self.target!r}; "
                           f"it has {sorted(batch['targets'])}")
        return batch["targets"][self.target]

    def loss(self, out, batch):
        return F.mse_loss(self.head(self.features(out)).squeeze(-1), self._target(batch))

    def metrics(self, out, batch):
        target = self._target(batch)
        pred = self.head(self.features(out)).squeeze(-1)
        residual = ((pred - target) ** 2).sum()
        total = ((target - target.mean()) ** 2).sum().clamp_min(1e-12)
        return {"mae": (pred - target).abs().mean().item(), "r2": (1 - residual / total).item()}
