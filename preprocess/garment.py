"""Garment photo preparation: cut-out garments (PNG with alpha) framed like the released demo does.

A garment cut out on a transparent background carries no framing of its own, so the released demo
crops a square around the opaque part, scales it to 768x768 and centres it on a white 768x1024
page (at y = 128). Photos without transparency already have a framing and are left as they are,
apart from becoming RGB; fitting them to the model size is the letterbox step's job.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from preprocess.images import ImageSource, open_image, to_rgb

GARMENT_SIZE = (768, 1024)


def prepare_garment(image: ImageSource, size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """RGB garment image: cut-outs framed on white at `size` = (width, height); other images unchanged.

    Cut-outs (any transparent pixel) are cropped to a square around their alpha bounding box, scaled
    to a square of side min(width, height) and centred on white, which for the default size is the
    released 768x768 at y = 128. A fully transparent image raises ValueError.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"size must be a positive (width, height), got {size}")
    image = open_image(image)
    if image.mode != "RGBA":
        return image
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() == 255:
        return to_rgb(image)
    rows, columns = np.nonzero(alpha)
    if rows.size == 0:
        raise ValueError("the garment image is fully transparent (empty alpha channel); nothing to try on")
    box = int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1
    square = image.crop(_square_around(*box))
    side = min(width, height)
    page = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    page.alpha_composite(
        square.resize((side, side), Image.Resampling.LANCZOS), ((width - side) // 2, (height - side) // 2)
    )
    return page.convert("RGB")


def _square_around(left: int, top: int, right: int, bottom: int) -> tuple[int, int, int, int]:
    """The square box sharing the centre of a box, with side = its longer side (may leave the image)."""
    side = max(right - left, bottom - top)
    square_left = left + (right - left - side) // 2
    square_top = top + (bottom - top - side) // 2
    return square_left, square_top, square_left + side, square_top + side
