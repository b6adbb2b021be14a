"""Auto-crop around the person: generate on the person at the model's full resolution, paste back.

A small person in a large photo would be generated at a fraction of the model's resolution. With auto-crop
the photo is cut to the person's box, with a margin, widened to the model frame's aspect (3:4) where the
photo allows; the cut is letterboxed into the frame as a whole photo would be, and the try-on result is
pasted back into the original photo: only the mask region changes (its edge blended inside the mask), every
other pixel stays as photographed, so nothing shows at the crop's border.

``auto`` crops when the crop would cover less than :data:`AUTO_CROP_BELOW` of the photo's area: a person who
fills the photo is generated exactly as without auto-crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

AUTO_CROP_CHOICES = ("auto", "on", "off")
#: ``auto`` crops when the crop covers less than this share of the photo.
AUTO_CROP_BELOW = 0.5
#: Margin around the person's box, each side, as a share of the box's height.
CROP_MARGIN = 0.1
#: Pixels (of the photo) over which the pasted result fades into the photo, inside the mask's edge.
FEATHER = 3


@dataclass(frozen=True)
class Crop:
    """A cut of a photo: ``box`` (left, top, right, bottom) in the pixels of a photo of ``photo_size``."""

    box: tuple[int, int, int, int]
    photo_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        left, top, right, bottom = self.box
        return right - left, bottom - top

    @property
    def share(self) -> float:
        """The crop's area as a share of the photo's."""
        width, height = self.size
        return width * height / (self.photo_size[0] * self.photo_size[1])

    def apply(self, image: Image.Image) -> Image.Image:
        """The same cut of ``image`` (of the photo's size, e.g. its mask or DensePose)."""
        if image.size != self.photo_size:
            raise ValueError(f"a {image.size[0]}x{image.size[1]} image cannot be cut like the "
                             f"{self.photo_size[0]}x{self.photo_size[1]} photo")
        return image.crop(self.box)


def check_auto_crop(mode: str) -> str:
    if mode not in AUTO_CROP_CHOICES:
        raise ValueError(f"auto_crop must be one of {', '.join(AUTO_CROP_CHOICES)}, got {mode!r}")
    return mode


def person_box(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box (left, top, right, bottom; right and bottom exclusive) of a bool person map, or
    ``None`` when it is empty."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_around(
    box: tuple[float, float, float, float], photo_size: tuple[int, int], frame_size: tuple[int, int],
    margin: float = CROP_MARGIN,
) -> Crop:
    """The crop around a person's ``box``: the margin added, widened or heightened to the frame's aspect
    (``frame_size`` = width, height) about the box's centre, moved inside the photo, and cut at its edges
    where the photo is smaller (the letterbox then pads, as for a whole photo)."""
    photo_width, photo_height = photo_size
    left, top, right, bottom = box
    pad = margin * (bottom - top)
    left, top, right, bottom = left - pad, top - pad, right + pad, bottom + pad
    aspect = frame_size[0] / frame_size[1]
    width, height = right - left, bottom - top
    if width / height < aspect:
        width = height * aspect
    else:
        height = width / aspect
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    width, height = min(width, photo_width), min(height, photo_height)
    x0 = min(max(centre_x - width / 2, 0.0), photo_width - width)
    y0 = min(max(centre_y - height / 2, 0.0), photo_height - height)
    crop = (round(x0), round(y0), round(x0 + width), round(y0 + height))
    return Crop(crop, (photo_width, photo_height))


def choose_crop(
    box: tuple[float, float, float, float] | None, photo_size: tuple[int, int], frame_size: tuple[int, int], mode: str
) -> tuple[Crop | None, str]:
    """The crop ``mode`` asks for (``auto``: only when it covers less than :data:`AUTO_CROP_BELOW` of the
    photo), and a note for the user: which crop, or why none."""
    check_auto_crop(mode)
    if mode == "off":
        return None, ""
    if box is None:
        return None, "auto-crop: no person found to crop around; the whole photo is used" if mode == "on" else ""
    crop = crop_around(box, photo_size, frame_size)
    if mode == "auto" and crop.share >= AUTO_CROP_BELOW:
        return None, ""
    left, top, right, bottom = crop.box
    return crop, (f"auto-crop: generated on the person ({right - left}x{bottom - top} px at ({left}, {top}) of the "
                  f"{photo_size[0]}x{photo_size[1]} photo), pasted back into the photo")


def paste_back(photo: Image.Image, result: Image.Image, crop: Crop, mask: np.ndarray) -> Image.Image:
    """``result`` (the crop's size) pasted into ``photo`` where ``mask`` (bool, the crop's size) is set, its
    edge faded over :data:`FEATHER` px inside the mask; every pixel outside the mask is the photo's."""
    if result.size != crop.size or mask.shape != (crop.size[1], crop.size[0]):
        raise ValueError(f"result {result.size} and mask {mask.shape[::-1]} must have the crop's size {crop.size}")
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    alpha = np.clip(inside / (FEATHER + 1), 0.0, 1.0)[:, :, None]
    left, top, right, bottom = crop.box
    pasted = np.asarray(photo.convert("RGB")).copy()
    region = pasted[top:bottom, left:right].astype(np.float64)
    blended = alpha * np.asarray(result.convert("RGB"), dtype=np.float64) + (1.0 - alpha) * region
    pasted[top:bottom, left:right] = np.where(mask[:, :, None], np.round(blended), region).astype(np.uint8)
    return Image.fromarray(pasted)


def crop_preview(photo: Image.Image, crop: Crop) -> Image.Image:
    """The photo with the crop outlined and the rest dimmed (what the model will see)."""
    preview = photo.convert("RGB")
    dimmed = Image.blend(preview, Image.new("RGB", preview.size, (0, 0, 0)), 0.45)
    dimmed.paste(preview.crop(crop.box), crop.box[:2])
    width = max(2, round(max(photo.size) / 200))
    left, top, right, bottom = crop.box
    ImageDraw.Draw(dimmed).rectangle((left, top, right - 1, bottom - 1), outline=(255, 200, 0), width=width)
    return dimmed
