"""ConvAutoencoder: the plain baseline, one unnamed latent vector; and the parts both built-in
models share (the conv trunk and decoder, residual blocks at 7x7, the growth and layer tables).

Depth settings (`encoder_blocks`, `decoder_blocks`) add residual blocks at the 7x7 map. Their
default, 0, gives the original architecture exactly: an empty `nn.Sequential` holds no tensors, so
the state-dict keys of today's configs and checkpoints are unchanged. `acc.models.expand` grows a
model by one block at a time (see `expansion_points()`).
"""

from __future__ import annotations

import torch
from torch import nn

from acc.models import register_model
from acc.protocol import ModelOutput


class ResidualBlock(nn.Module):
    """`x + conv2(relu(conv1(x)))`, both 3x3 with padding 1 and stride 1, so the map keeps its shape
    (the factor-slot attention maps stay 7x7). No normalisation: a norm layer is an identity in only
    one of train/eval modes, which would make a zero-initialised block not function-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def residual_blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(count)))


def block_params(channels: int) -> int:
    """Parameters one `ResidualBlock(channels)` adds: two 3x3 convs with bias."""
    return 2 * (channels * channels * 9 + channels)


def check_depth(name: str, value: object, minimum: int = 0) -> int:
    """A depth setting must be a plain int >= minimum (bools and floats are refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def conv_encoder(channels: int) -> nn.Sequential:
    """28x28 -> [channels, 7, 7]: the trunk both built-in models share."""
    return nn.Sequential(
        nn.Conv2d(1, channels // 2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels // 2, channels, 4, stride=2, padding=1), nn.ReLU(),  # 14x14
        nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),  # 7x7
        nn.Conv2d(channels, channels, 3, padding=1),
    )


def conv_decoder(latent_dim: int, channels: int) -> nn.Sequential:
    """[latent_dim] -> logits [1, 28, 28]. Indices 0-2 reach the 7x7 map (Linear, ReLU, Unflatten);
    `run_decoder` puts the decoder's residual blocks between index 2 and 3."""
    return nn.Sequential(
        nn.Linear(latent_dim, channels * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (channels, 7, 7)),
        nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1), nn.ReLU(),  # 14x14
        nn.ConvTranspose2d(channels // 2, channels // 2, 4, stride=2, padding=1), nn.ReLU(),  # 28x28
        nn.Conv2d(channels // 2, 1, 3, padding=1),
    )


DECODER_MAP_END = 3  # conv_decoder[:3] ends at the 7x7 map


def run_decoder(decoder: nn.Sequential, blocks: nn.Sequential, latent: torch.Tensor) -> torch.Tensor:
    """decoder[:3] -> blocks (at 7x7) -> decoder[3:], leaving the decoder's indices (and so its
    state-dict keys) as they were before blocks existed."""
    h = latent
    for i, layer in enumerate(decoder):
        if i == DECODER_MAP_END:
            h = blocks(h)
        h = layer(h)
    return h


def block_points(channels: int, encoder_blocks: int, decoder_blocks: int) -> list[dict]:
    """The places a residual block can go: `"encoder:K"` / `"decoder:K"` inserts one at position K
    (0..count) of that side's blocks, the blocks from K on moving up one."""
    points = []
    for side, count in (("encoder", encoder_blocks), ("decoder", decoder_blocks)):
        for k in range(count + 1):
            where = (f"the {side}'s first" if count == 0 else
                     f"block {k + 1} of {count + 1} in the {side} (before the {side}'s block {k + 1})" if k < count else
                     f"block {k + 1} of {count + 1} in the {side} (after the last)")
            kind = f"residual conv block (3x3, {channels} ch) at 7x7: {where}"
            points.append({"where": f"{side}:{k}", "kind": kind, "shape": [channels, 7, 7],
                           "params": block_params(channels), "inits": ["identity", "random"]})
    return points


# What `describe_layers` lists: the modules that hold the weights, a residual block as one unit.
LAYER_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.LayerNorm, ResidualBlock)


def describe_layers(model: nn.Module, anchors: dict[str, str] | None = None) -> list[dict]:
    """The model's layers in forward order, `{"name", "type", "shape", "params"}`.

    Order and output shapes (without the batch dimension) come from one probe forward, with hooks,
    on a twin built from `model.config()` on the meta device: no memory, no compute, no RNG drawn,
    and nothing registered on the live model (which the engine may be training in another thread
    while this is asked). A parameter that sits directly on a container (the factor-slot
    `position`, a slot's `query`) gets a row of type "Parameter" with its own shape, just before
    the first layer of its owner, or before `anchors[name]` where given. Together the rows count
    every parameter once.
    """
    from acc.models import build_model  # the registry imports this module

    anchors = anchors or {}
    with torch.device("meta"):
        twin = build_model(model.config())
    layers: dict[str, nn.Module] = {}
    for name, module in twin.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer in layers)
        if isinstance(module, LAYER_TYPES) and not inside:
            layers[name] = module
    order: list[str] = []
    shapes: dict[str, list[int] | None] = {}

    def hook(name: str):
        def record(_module, _inputs, output):
            if name not in shapes:
                order.append(name)
                shapes[name] = list(output.shape[1:]) if isinstance(output, torch.Tensor) else None
        return record

    for name, module in layers.items():
        module.register_forward_hook(hook(name))  # the twin is thrown away afterwards
    with torch.no_grad():
        twin(torch.zeros(1, 1, 28, 28, device="meta"))
    order += [name for name in layers if name not in shapes]  # never called: no shape known

    rows = [{"name": name, "type": type(layers[name]).__name__, "shape": shapes.get(name),
             "params": sum(p.numel() for p in layers[name].parameters())} for name in order]
    covered = {f"{layer}.{p}" for layer in layers for p, _ in layers[layer].named_parameters()}
    for pname, param in twin.named_parameters():
        if pname in covered:
            continue
        owner = pname.rsplit(".", 1)[0] + "." if "." in pname else ""
        anchor = anchors.get(pname)
        at = next((i for i, row in enumerate(rows)
                   if (row["name"] == anchor if anchor else row["name"].startswith(owner))), len(rows))
        rows.insert(at, {"name": pname, "type": "Parameter", "shape": list(param.shape),
                         "params": param.numel()})
    return rows


@register_model("conv_ae")
class ConvAutoencoder(nn.Module):
    recon_logits = True

    def __init__(self, latent_dim: int = 32, channels: int = 64, encoder_blocks: int = 0,
                 decoder_blocks: int = 0) -> None:
        super().__init__()
        self.latent_dim, self.channels = latent_dim, channels
        check_depth("encoder_blocks", encoder_blocks)
        check_depth("decoder_blocks", decoder_blocks)
        self.encoder = nn.Sequential(conv_encoder(channels), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(channels * 7 * 7, latent_dim))
        # Between encoder[0] (the 7x7 map) and the rest; registered separately so encoder.* keys stay.
        self.encoder_blocks = residual_blocks(channels, encoder_blocks)
        self.decoder = conv_decoder(latent_dim, channels)
        self.decoder_blocks = residual_blocks(channels, decoder_blocks)
        self.latent_slices = {"all": slice(0, latent_dim)}

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = x
        for i, layer in enumerate(self.encoder):
            h = self.encoder_blocks(layer(h)) if i == 0 else layer(h)  # blocks right after the 7x7 map
        return {"latent": h, "recon": self.decode(h)}

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return run_decoder(self.decoder, self.decoder_blocks, latent)

    def config(self) -> dict:
        return {"name": "conv_ae", "latent_dim": self.latent_dim, "channels": self.channels,
                "encoder_blocks": len(self.encoder_blocks), "decoder_blocks": len(self.decoder_blocks)}

    def expansion_points(self) -> list[dict]:
        return block_points(self.channels, len(self.encoder_blocks), len(self.decoder_blocks))

    def layers(self) -> list[dict]:
        return describe_layers(self)
