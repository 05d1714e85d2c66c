"""PNG pictures of tensors, drawn with Pillow: white digits on black, scaled up without blurring."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

SCALE = 3  # 28 px digits become 84 px: readable without the browser's blurry upscaling
GAP = 2  # px of mid-grey between digits and between rows
GAP_VALUE = 96
# Captions of the dataset grids: the page shows a grid at about its own size (8 columns of 2x
# digits, ~480 px), so a caption's pixels are about CSS pixels: 16 px text (digits ~11 px tall)
# reads at the default zoom, where 11 px text (digits 8 px tall) did not.
CAPTION_FONT_PX = 16
CAPTION_MIN_FONT_PX = 11  # a caption too wide for its cell at the full size shrinks down to this
CAPTION_H = 21  # px under each captioned image
CAPTION_SCALE = 2


def grid_png(rows: list[torch.Tensor], scale: int = SCALE, gap: int = GAP) -> bytes:
    """Rows of images ([n, 1, h, w] in [0, 1], the same n and size) as one greyscale PNG."""
    n, _, h, w = rows[0].shape
    cell_h, cell_w = h * scale + gap, w * scale + gap
    canvas = np.full((len(rows) * cell_h + gap, n * cell_w + gap), GAP_VALUE, dtype=np.uint8)
    for r, images in enumerate(rows):
        pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour upscaling
        for i, image in enumerate(pixels):
            top, left = gap + r * cell_h, gap + i * cell_w
            canvas[top:top + h * scale, left:left + w * scale] = image
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format="PNG")
    return out.getvalue()


def captioned_grid_png(images: torch.Tensor, captions: list[str], columns: int = 8,
                       scale: int = CAPTION_SCALE) -> bytes:
    """Images (uint8 [n, 1, 28, 28]) in rows of `columns`, each with its caption underneath."""
    fonts = [ImageFont.load_default(size=size) for size in range(CAPTION_FONT_PX, CAPTION_MIN_FONT_PX - 1, -1)]
    n, _, h, w = images.shape
    cell_w, cell_h = w * scale + GAP * 2, h * scale + CAPTION_H + GAP
    rows = max(1, -(-n // columns))
    canvas = Image.new("L", (columns * cell_w + GAP, rows * cell_h + GAP), GAP_VALUE)
    draw = ImageDraw.Draw(canvas)
    pixels = images[:, 0].numpy().repeat(scale, axis=1).repeat(scale, axis=2)
    for i, (image, caption) in enumerate(zip(pixels, captions)):
        left, top = GAP + (i % columns) * cell_w, GAP + (i // columns) * cell_h
        canvas.paste(Image.fromarray(image), (left, top))
        font = next((f for f in fonts if draw.textlength(caption, font=f) <= cell_w - GAP), fonts[-1])
        draw.text((left + w * scale / 2, top + h * scale + 2), caption, fill=255, font=font, anchor="ma")
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
