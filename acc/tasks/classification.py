import torch.nn.functional as F

from acc.tasks.base import Task


class ClassificationTask(Task):
    """Predict the digit class from a latent group; metric accuracy."""

    out_dim = 10

    def check_data(self, dataset):
        if not (dataset.labels >= 0).any():
            raise ValueError(f"dataset {self.dataset!r} has no class labels to classify")

    def loss(self, out, batch):
        labels = batch["label"]
        if not (labels >= 0).any():
            raise ValueError(f"dataset {self.dataset!r} has no class labels in this batch")
        return F.cross_entropy(self.head(self.features(out)), labels, ignore_index=-1)

    def metrics(self, out, batch):
        known = batch["label"] >= 0
        pred = self.head(self.features(out)).argmax(-1)
        return {"accuracy": (pred[known] == batch["label"][known]).float().mean().item()}
