"""Factor-Slot autoencoder (M1.75): one learned query per named factor attends over the encoder's
7x7 feature map; each attended vector goes through that factor's own MLP to its slot; the latent is
the concatenation of the slots and the decoder reconstructs from it.

Parameters split three ways, which is what task gradient isolation relies on:
trunk (conv encoder, positional encoding, key/value projections), each slot's own query + MLP,
and the decoder. `"latent_isolated"` recomputes the slots from trunk features with the gradient
stopped, so a task reading it teaches only its own slot.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from acc.models import register_model
from acc.models.autoencoder import conv_decoder, conv_encoder
from acc.protocol import ModelOutput

DEFAULT_FACTORS = ("digit", "thickness", "slant", "style")


class Slot(nn.Module):
    """One factor's own parameters: its query and the MLP from attended features to its slot."""

    def __init__(self, channels: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(channels) / math.sqrt(channels))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, dim))


@register_model("factor_slot")
class FactorSlotAutoencoder(nn.Module):
    recon_logits = True

    def __init__(self, factors: list[str] | dict[str, int] = DEFAULT_FACTORS, slot_dim: int = 8,
                 channels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        sizes = dict(factors) if isinstance(factors, dict) else {name: slot_dim for name in factors}
        if not sizes or "all" in sizes:
            raise ValueError(f"factors must be a non-empty list of names other than 'all', got {list(sizes)}")
        self.factor_sizes, self.channels, self.hidden = sizes, channels, hidden
        self.encoder = conv_encoder(channels)
        self.position = nn.Parameter(torch.randn(1, 49, channels) * 0.02)
        self.norm = nn.LayerNorm(channels)
        self.to_key = nn.Linear(channels, channels)
        self.to_value = nn.Linear(channels, channels)
        self.slots = nn.ModuleDict({name: Slot(channels, hidden, dim) for name, dim in sizes.items()})
        latent_dim = sum(sizes.values())
        self.decoder = conv_decoder(latent_dim, channels)

        self.latent_slices: dict[str, slice] = {}
        start = 0
        for name, dim in sizes.items():
            self.latent_slices[name] = slice(start, start + dim)
            start += dim
        self.latent_slices["all"] = slice(0, latent_dim)

    def _slots(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each factor's query attends over the positions (softmax over positions)."""
        queries = torch.stack([slot.query for slot in self.slots.values()])  # [F, C]
        scores = torch.einsum("fc,bnc->bfn", queries, keys) / math.sqrt(self.channels)
        attention = scores.softmax(dim=-1)  # [B, F, 49]
        attended = torch.einsum("bfn,bnc->bfc", attention, values)
        slots = [slot.mlp(attended[:, i]) for i, slot in enumerate(self.slots.values())]
        return slots, attention

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.encoder(x).flatten(2).transpose(1, 2)  # [B, 49, C]
        tokens = self.norm(features + self.position)
        keys, values = self.to_key(tokens), self.to_value(tokens)
        slots, attention = self._slots(keys, values)
        latent = torch.cat(slots, dim=1)
        if torch.is_grad_enabled():
            isolated = torch.cat(self._slots(keys.detach(), values.detach())[0], dim=1)
        else:  # same values; the copy only matters for gradients
            isolated = latent
        names = list(self.slots)
        return {
            "latent": latent,
            "latent_isolated": isolated,
            "recon": self.decode(latent),
            "factors": dict(zip(names, slots)),
            "attention": {name: attention[:, i].reshape(-1, 7, 7) for i, name in enumerate(names)},
        }

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The reconstruction (logits) of a latent [B, D]: traversals decode edited latents."""
        return self.decoder(latent)

    def config(self) -> dict:
        return {"name": "factor_slot", "factors": dict(self.factor_sizes),
                "channels": self.channels, "hidden": self.hidden}
