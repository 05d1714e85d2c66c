"""Factor-Slot autoencoder (M1.75): one learned query per named factor attends over the encoder's
7x7 feature map; each attended vector goes through that factor's own MLP to its slot; the latent is
the concatenation of the slots and the decoder reconstructs from it.

Parameters split three ways, which is what task gradient isolation relies on:
trunk (conv encoder, positional encoding, key/value projections), each slot's own query + MLP,
and the decoder. `"latent_isolated"` recomputes the slots from trunk features with the gradient
stopped, so a task reading it teaches only its own slot.

Depth settings: `encoder_blocks` residual blocks at 7x7 after the conv trunk, `decoder_blocks` at
7x7 inside the decoder, `slot_layers` Linear layers in each slot's MLP. The defaults (0, 0, 2) are
the original architecture exactly, with the same state-dict keys, so older configs and checkpoints
load unchanged. `acc.models.expand` grows a model one layer at a time (`expansion_points()`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from acc.models import register_model
from acc.models.autoencoder import (block_points, check_depth, conv_decoder, conv_encoder, describe_layers,
                                    residual_blocks, run_decoder)
from acc.protocol import ModelOutput

DEFAULT_FACTORS = ("digit", "thickness", "slant", "style")


def slot_mlp(channels: int, hidden: int, dim: int, layers: int) -> nn.Sequential:
    """`layers` Linear layers with a ReLU between each two: 1 = Linear(C, dim); 2 = Linear(C, h),
    ReLU, Linear(h, dim) (the original); n = Linear(C, h), [ReLU, Linear(h, h)] * (n - 2), ReLU,
    Linear(h, dim). So the K-th ReLU is at index 2K - 1 and the Linear after it at index 2K."""
    if layers == 1:
        return nn.Sequential(nn.Linear(channels, dim))
    modules: list[nn.Module] = [nn.Linear(channels, hidden)]
    for _ in range(layers - 2):
        modules += [nn.ReLU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*modules, nn.ReLU(), nn.Linear(hidden, dim))


class Slot(nn.Module):
    """One factor's own parameters: its query and the MLP from attended features to its slot."""

    def __init__(self, channels: int, hidden: int, dim: int, layers: int = 2) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(channels) / math.sqrt(channels))  # drawn first, as before
        self.mlp = slot_mlp(channels, hidden, dim, layers)


@register_model("factor_slot")
class FactorSlotAutoencoder(nn.Module):
    recon_logits = True

    def __init__(self, factors: list[str] | dict[str, int] = DEFAULT_FACTORS, slot_dim: int = 8,
                 channels: int = 32, hidden: int = 64, encoder_blocks: int = 0, decoder_blocks: int = 0,
                 slot_layers: int = 2) -> None:
        super().__init__()
        check_depth("encoder_blocks", encoder_blocks)
        check_depth("decoder_blocks", decoder_blocks)
        self.slot_layers = check_depth("slot_layers", slot_layers, minimum=1)
        sizes = dict(factors) if isinstance(factors, dict) else {name: slot_dim for name in factors}
        if not sizes or "all" in sizes:
            raise ValueError(f"factors must be a non-empty list of names other than 'all', got {list(sizes)}")
        self.factor_sizes, self.channels, self.hidden = sizes, channels, hidden
        self.encoder = conv_encoder(channels)
        # Blocks are built where they run, so with none the RNG draws (and so a seeded model's
        # initial weights) are the same as before depth settings existed.
        self.encoder_blocks = residual_blocks(channels, encoder_blocks)
        self.position = nn.Parameter(torch.randn(1, 49, channels) * 0.02)
        self.norm = nn.LayerNorm(channels)
        self.to_key = nn.Linear(channels, channels)
        self.to_value = nn.Linear(channels, channels)
        self.slots = nn.ModuleDict({name: Slot(channels, hidden, dim, slot_layers) for name, dim in sizes.items()})
        latent_dim = sum(sizes.values())
        self.decoder = conv_decoder(latent_dim, channels)
        self.decoder_blocks = residual_blocks(channels, decoder_blocks)

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
        features = self.encoder_blocks(self.encoder(x)).flatten(2).transpose(1, 2)  # [B, 49, C]
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
        return run_decoder(self.decoder, self.decoder_blocks, latent)

    def config(self) -> dict:
        return {"name": "factor_slot", "factors": dict(self.factor_sizes),
                "channels": self.channels, "hidden": self.hidden, "encoder_blocks": len(self.encoder_blocks),
                "decoder_blocks": len(self.decoder_blocks), "slot_layers": self.slot_layers}

    def expansion_points(self) -> list[dict]:
        """Residual blocks in the encoder/decoder, and `"slots:K"` (K in 1..slot_layers-1): a hidden
        Linear(h, h) + ReLU in every slot's MLP right after its K-th ReLU.

        There is no slots point when slot_layers == 1: the MLP is a single Linear(C, dim) with no
        ReLU to sit behind, so a new layer would read signed values (an eye layer followed by a ReLU
        would cut the negatives) and going from C -> dim to C -> h -> dim would mean rewriting the
        existing weight, not copying it. Build a model with slot_layers=2 instead."""
        points = block_points(self.channels, len(self.encoder_blocks), len(self.decoder_blocks))
        h, n, count = self.hidden, self.slot_layers, len(self.slots)
        for k in range(1, n):
            points.append({
                "where": f"slots:{k}",
                "kind": (f"hidden layer Linear({h}, {h}) + ReLU in every slot's MLP ({count} slots), "
                         f"after ReLU {k} of {n - 1} (MLP becomes {n + 1} Linear layers)"),
                "shape": [h], "params": count * (h * h + h), "inits": ["identity", "random"]})
        return points

    def layers(self) -> list[dict]:
        # `position` is added to the encoder's features just before the LayerNorm.
        return describe_layers(self, anchors={"position": "norm"})
