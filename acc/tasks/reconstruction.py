import torch
import torch.nn.functional as F

from acc.protocol import recon_probabilities
from acc.tasks.base import Task


class ReconstructionTask(Task):
    """Reconstruct the input image (binary cross-entropy); metrics MSE and PSNR."""

    def build_head(self, in_dim):
        return None  # the model's decoder is the head

    def loss(self, out, batch):
        if self.recon_logits:
            return F.binary_cross_entropy_with_logits(out["recon"], batch["image"])
        return F.binary_cross_entropy(out["recon"].clamp(0, 1), batch["image"])

    def metrics(self, out, batch):
        error = (recon_probabilities(self.recon_logits, out["recon"]) - batch["image"]).pow(2)
        per_image = error.flatten(1).mean(1)
        psnr = -10 * torch.log10(per_image.clamp_min(1e-10))  # pixel range is 1
        return {"mse": per_image.mean().item(), "psnr": psnr.mean().item()}
