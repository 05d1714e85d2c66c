"""Pictures of digits drawn with Pillow: white digits on mid-grey, scaled up without blurring,
captions in Pillow's own scalable font. Shared by the server's dataset and reconstruction grids
(acc.server.images re-exports these names) and the factoring evaluation's figures (acc.eval.figures).

Drawing returns numpy arrays; `png_bytes` encodes one at the edge (an HTTP response, a file).
"""

from __future__ import annotations

import io
from functools import lru_cache

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


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 image, [H, W] (greyscale) or [H, W, 3] (RGB), as PNG bytes. Deterministic: the
    same array gives the same bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected a uint8 image [H,W] or [H,W,3], got {array.dtype} {list(array.shape)}")
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font at `size` px."""
    return ImageFont.load_default(size=size)


def caption_fonts(largest: int = CAPTION_FONT_PX, smallest: int = CAPTION_MIN_FONT_PX) -> list:
    """The caption fonts to try, largest first."""
    return [font(size) for size in range(largest, smallest - 1, -1)]


def fitting_font(draw: ImageDraw.ImageDraw, text: str, width: float, fonts: list):
    """The first (largest) of `fonts` in which `text` is at most `width` px wide, else the last."""
    return next((f for f in fonts if draw.textlength(text, font=f) <= width), fonts[-1])


def upscale_nearest(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Images [..., H, W] scaled up `scale` times by repeating pixels (no blurring)."""
    return pixels.repeat(scale, axis=-2).repeat(scale, axis=-1)


def as_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images as uint8: uint8 kept, floats taken to be in [0, 1] (clipped, rounded)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)


def grid(rows: list[np.ndarray], scale: int = SCALE, gap: int = GAP) -> np.ndarray:
    """Rows of images (uint8 [n, h, w], the same n and size) as one greyscale uint8 image."""
    n, h, w = rows[0].shape
    cell_h, cell_w = h * scale + gap, w * scale + gap
    canvas = np.full((len(rows) * cell_h + gap, n * cell_w + gap), GAP_VALUE, dtype=np.uint8)
    for r, images in enumerate(rows):
        pixels = upscale_nearest(images, scale)
        for i, image in enumerate(pixels):
            top, left = gap + r * cell_h, gap + i * cell_w
            canvas[top:top + h * scale, left:left + w * scale] = image
    return canvas


def grid_png(rows: list[torch.Tensor], scale: int = SCALE, gap: int = GAP) -> bytes:
    """Rows of images ([n, 1, h, w] in [0, 1], the same n and size) as one greyscale PNG."""
    return png_bytes(grid([as_uint8(images[:, 0].clamp(0, 1)) for images in rows], scale, gap))


def captioned_grid(images: np.ndarray, captions: list[str], columns: int = 8,
                   scale: int = CAPTION_SCALE) -> np.ndarray:
    """Images (uint8 [n, 28, 28]) in rows of `columns`, each with its caption underneath: uint8 [H, W]."""
    fonts = caption_fonts()
    n, h, w = images.shape
    cell_w, cell_h = w * scale + GAP * 2, h * scale + CAPTION_H + GAP
    rows = max(1, -(-n // columns))
    canvas = Image.new("L", (columns * cell_w + GAP, rows * cell_h + GAP), GAP_VALUE)
    draw = ImageDraw.Draw(canvas)
    pixels = upscale_nearest(images, scale)
    for i, (image, caption) in enumerate(zip(pixels, captions)):
        left, top = GAP + (i % columns) * cell_w, GAP + (i // columns) * cell_h
        canvas.paste(Image.fromarray(image), (left, top))
        f = fitting_font(draw, caption, cell_w - GAP, fonts)
        draw.text((left + w * scale / 2, top + h * scale + 2), caption, fill=255, font=f, anchor="ma")
    return np.asarray(canvas)


def captioned_grid_png(images: torch.Tensor, captions: list[str], columns: int = 8,
                       scale: int = CAPTION_SCALE) -> bytes:
    """Images (uint8 [n, 1, 28, 28]) in rows of `columns`, each with its caption underneath, as PNG."""
    return png_bytes(captioned_grid(as_uint8(images[:, 0]), captions, columns, scale))
