"""PNG pictures of tensors, drawn with Pillow: white digits on black, scaled up without blurring.

The drawing lives in acc.images (the factoring evaluation's figures use it too); these names stay
importable from here.
"""

from __future__ import annotations

from acc.images import (
    CAPTION_FONT_PX,
    CAPTION_H,
    CAPTION_MIN_FONT_PX,
    CAPTION_SCALE,
    GAP,
    GAP_VALUE,
    SCALE,
    captioned_grid_png,
    grid_png,
    png_bytes,
)

__all__ = ["CAPTION_FONT_PX", "CAPTION_H", "CAPTION_MIN_FONT_PX", "CAPTION_SCALE", "GAP", "GAP_VALUE", "SCALE",
           "captioned_grid_png", "grid_png", "png_bytes"]
