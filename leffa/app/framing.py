"""How a photo becomes the model frame (an optional auto-crop around the person, then the letterbox) and
how a result goes back: cropped back to the photo's framing, or pasted into the photo after a crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from leffa.core.transforms import Letterbox, crop_back, letterbox
from preprocess.crop import Crop, paste_back, person_box

_BLACK = (0, 0, 0)


@dataclass(frozen=True)
class Framing:
    """``photo`` cut to ``crop`` (when not ``None``) and letterboxed (``box``) into the model frame."""

    photo: Image.Image
    box: Letterbox
    crop: Crop | None = None

    @classmethod
    def make(cls, photo: Image.Image, size: tuple[int, int], crop: Crop | None = None) -> tuple[Image.Image, Framing]:
        """The model-frame image of ``photo`` (``size`` = width, height) and its framing."""
        framed, box = letterbox(crop.apply(photo) if crop is not None else photo, size)
        return framed, cls(photo, box, crop)

    def supplied(self, image: Image.Image) -> Image.Image:
        """A supplied mask or DensePose in the frame: one of the photo's size is cut and letterboxed like
        the photo (black borders, nearest neighbour); any other is taken as already framed and resized to
        the frame."""
        if image.size == self.photo.size:
            source = self.crop.apply(image) if self.crop is not None else image
            framed, _ = letterbox(source, self.box.canvas_size, fill=_BLACK, resample=Image.Resampling.NEAREST)
            return framed
        if self.crop is not None:
            raise ValueError(
                f"the supplied mask or DensePose is {image.size[0]}x{image.size[1]}, not the photo's "
                f"{self.photo.size[0]}x{self.photo.size[1]}, so it cannot be cut like the photo: give it at the "
                "photo's size, or turn auto-crop off"
            )
        return image if image.size == self.box.canvas_size else image.resize(self.box.canvas_size, Image.Resampling.NEAREST)

    def to_photo(self, image: Image.Image) -> Image.Image:
        """A model-frame mask or DensePose at the photo's size (nearest neighbour; black outside an auto-crop):
        the inverse of :meth:`supplied`, so a map handed back at the photo's size is framed as before."""
        content = image.crop(self.box.box).resize(self.box.original_size, Image.Resampling.NEAREST)
        if self.crop is None:
            return content
        photo = Image.new(image.mode, self.photo.size, 0)
        photo.paste(content, self.crop.box[:2])
        return photo

    def in_photo_frame(self, image: Image.Image) -> bool:
        """Whether a supplied mask or DensePose can be cut like the photo."""
        return image.size == self.photo.size

    def photo_box(self, region: np.ndarray) -> tuple[float, float, float, float] | None:
        """The box, in photo pixels, of a bool map in the model frame (e.g. the person), or ``None``."""
        box = person_box(region)
        if box is None:
            return None
        left, top, right, bottom = self.box.box
        scale_x = self.box.original_size[0] / (right - left)
        scale_y = self.box.original_size[1] / (bottom - top)
        x0, y0, x1, y1 = box
        offset = self.crop.box[:2] if self.crop is not None else (0, 0)
        return (
            offset[0] + max(x0 - left, 0) * scale_x, offset[1] + max(y0 - top, 0) * scale_y,
            offset[0] + min(x1 - left, right - left) * scale_x, offset[1] + min(y1 - top, bottom - top) * scale_y,
        )

    def cut_through(self, mask: Image.Image) -> bool:
        """Whether ``mask`` (model frame) reaches a side of the crop that lies inside the photo: the result
        would end there in a straight line."""
        if self.crop is None:
            return False
        left, top, right, bottom = self.box.box
        inside = np.asarray(mask.convert("L"))[top:bottom, left:right] > 127
        x0, y0, x1, y1 = self.crop.box
        width, height = self.crop.photo_size
        edges = ((x0 > 0, inside[:, 0]), (y0 > 0, inside[0]), (x1 < width, inside[:, -1]), (y1 < height, inside[-1]))
        return any(cut and line.any() for cut, line in edges)

    def back(self, raw: Image.Image, mask: Image.Image | None = None) -> Image.Image:
        """A model-frame result in the photo's framing: cropped back; after a crop, pasted into the photo
        where ``mask`` (model frame) is set, or, with no mask (pose transfer), the crop itself."""
        result = crop_back(raw, self.box)
        if self.crop is None or mask is None:
            return result
        left, top, right, bottom = self.box.box
        cut = mask.convert("L").crop((left, top, right, bottom)).resize(self.crop.size, Image.Resampling.NEAREST)
        return paste_back(self.photo, result, self.crop, np.asarray(cut) > 127)

    def to_frame(self, point: tuple[float, float], shown_size: tuple[int, int]) -> tuple[float, float]:
        """A pixel ``(x, y)`` of the shown result (``shown_size``) in the letterboxed frame's pixels (continuous,
        pixel centres at +0.5); a ``ValueError`` when it lies outside the shown result or the generated crop."""
        x, y = point
        width, height = shown_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"point ({x}, {y}) lies outside the result image of {width}x{height} pixels")
        if self.crop is not None and shown_size == self.photo.size:
            left, top, right, bottom = self.crop.box
            if not (left <= x < right and top <= y < bottom):
                raise ValueError(
                    f"point ({x}, {y}) lies outside the generated region ({left}, {top})-({right}, {bottom}) of the "
                    "photo (auto-crop): click inside it"
                )
            x, y, width, height = x - left, y - top, right - left, bottom - top
        left, top, right, bottom = self.box.box
        return left + (x + 0.5) * (right - left) / width, top + (y + 0.5) * (bottom - top) / height
