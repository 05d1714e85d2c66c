"""ConvAutoencoder: the plain baseline, one unnamed latent vector."""

from __future__ import annotations

import torch
from torch import nn

from acc.models import register_model
from acc.protocol import ModelOutput


def conv_encoder(channels: int) -> nn.Sequential:
    """28x28 -> [channels, 7, 7]: the trunk both built-in models share."""
    return nn.Sequential(
        nn.Conv2d(1, channels // 2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels // 2, channels, 4, stride=2, padding=1), nn.ReLU(),  # 14x14
        nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),  # 7x7
        nn.Conv2d(channels, channels, 3, padding=1),
    )


def conv_decoder(latent_dim: int, channels: int) -> nn.Sequential:
    """[latent_dim] -> logits [1, 28, 28]."""
    return nn.Sequential(
        nn.Linear(latent_dim, channels * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (channels, 7, 7)),
        nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1), nn.ReLU(),  # 14x14
        nn.ConvTranspose2d(channels // 2, channels // 2, 4, stride=2, padding=1), nn.ReLU(),  # 28x28
        nn.Conv2d(channels // 2, 1, 3, padding=1),
    )


@register_model("conv_ae")
class ConvAutoencoder(nn.Module):
    recon_logits = True

    def __init__(self, latent_dim: int = 32, channels: int = 64) -> None:
        super().__init__()
        self.latent_dim, self.channels = latent_dim, channels
        self.encoder = nn.Sequential(conv_encoder(channels), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(channels * 7 * 7, latent_dim))
        self.decoder = conv_decoder(latent_dim, channels)
        self.latent_slices = {"all": slice(0, latent_dim)}

    def forward(self, x: torch.Tensor) -> ModelOutput:
        latent = self.encoder(x)
        return {"latent": latent, "recon": self.decode(latent)}

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def config(self) -> dict:
        return {"name": "conv_ae", "latent_dim": self.latent_dim, "channels": self.channels}
