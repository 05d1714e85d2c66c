import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from acc.measure import set_thickness
from acc.tasks.base import Task


class ThicknessSwapTask(Task):
    """Redraw each digit at another stroke thickness, give its code the thickness slot of the redrawn
    digit, and reconstruct the redrawn digit from that: the decoder must read thickness there.

    Weak supervision by pairs that differ in one factor (Locatello et al. 2020, "Weakly-supervised
    disentanglement without compromises"). Its gradient goes through the encoder and the decoder, as
    reconstruction's does. Redrawing costs about 40 ms per 64 digits on a CPU core.
    """

    latent = "thickness"

    class Params(BaseModel):
        low: float = Field(1.5, ge=0.5, le=8.0, description="thinnest redrawn stroke, pixels")
        high: float = Field(5.5, ge=0.5, le=8.0, description="thickest redrawn stroke, pixels")
        seed: int = Field(0, ge=0, description="seed of the redrawn thicknesses")

    def build_head(self, in_dim):
        return None  # the model's decoder is the head

    def bind(self, model):
        super().bind(model)
        self.rng = np.random.default_rng(self.seed)

    def loss(self, out, batch):
        images = batch["image"]
        thickness = self.rng.uniform(self.low, self.high, len(images))
        redrawn = torch.from_numpy(set_thickness(images[:, 0].detach().cpu(), thickness))
        redrawn = redrawn.to(images.device, torch.float32).div(255).unsqueeze(1)
        theirs = self.model(redrawn)["latent"][:, self.slice]
        latent = out["latent"]
        swapped = torch.cat([latent[:, :self.slice.start], theirs, latent[:, self.slice.stop:]], dim=1)
        recon = self.model.decode(swapped)
        if self.recon_logits:
            return F.binary_cross_entropy_with_logits(recon, redrawn)
        return F.binary_cross_entropy(recon.clamp(0, 1), redrawn)
