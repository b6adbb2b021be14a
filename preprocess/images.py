"""Loading and validating user images.

Every photo a user hands in goes through here first, so that odd files (truncated, not an image,
tiny, gigantic, rotated by EXIF, transparent, CMYK, 16-bit grey, palette) become either a plain
upright RGB image or one clear `InvalidImageError` instead of a crash deep inside a model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | Path | Image.Image | np.ndarray

MIN_SIDE = 64
MAX_PIXELS = 40_000_000

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_HIGH_DEPTH_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class InvalidImageError(ValueError):
    """The input is not a usable image (unreadable, too small, too large, unsupported layout)."""


def open_image(source: ImageSource, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and validate an image, keeping transparency: the result is upright and "RGB" or "RGBA".

    Garments cut out on a transparent background need their alpha (see `preprocess.garment`);
    everything else should use `load_image`.
    """
    image = _read(source, max_pixels)
    _check_size(image.size, min_side, max_pixels)
    image = ImageOps.exif_transpose(image)
    return _normalise_mode(image)


def load_image(source: ImageSource, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and validate an image as upright RGB; transparent pixels are composited on white."""
    return to_rgb(open_image(source, min_side=min_side, max_pixels=max_pixels))


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image; an RGBA image is composited on white rather than having its alpha dropped."""
    image = _normalise_mode(image)
    if image.mode == "RGB":
        return image
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _read(source: ImageSource, max_pixels: int) -> Image.Image:
    """Decode `source` into a loaded PIL image without ever decoding more than `max_pixels`."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if not isinstance(source, (str, Path)):
        raise InvalidImageError(
            f"expected a file path, PIL image or numpy array, got {type(source).__name__}"
        )
    path = Path(source)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not an image file; pass an image inside it")
    if path.exists() and not path.is_file():
        raise InvalidImageError(
            f"{path} is not a regular file (a pipe, socket or device); save the image to a file and pass that"
        )
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            _check_size(image.size, 1, max_pixels)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImageError(f"{path} is too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise InvalidImageError(f"{path} is not an image file PIL can read (PNG, JPEG, WebP, ...)") from error
    except OSError as error:
        raise InvalidImageError(
            f"{path} could not be decoded (truncated or corrupt file?): {error}"
        ) from error
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    """Wrap a uint8 array of shape (H, W), (H, W, 3) (RGB) or (H, W, 4) (RGBA) as a PIL image."""
    if array.dtype != np.uint8:
        raise InvalidImageError(
            f"image arrays must be uint8 in 0..255, got dtype {array.dtype}; convert with "
            "(array * 255).round().astype(np.uint8) for arrays in [0, 1]"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))
    raise InvalidImageError(f"image arrays must have shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def _check_size(size: tuple[int, int], min_side: int, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the limit of "
            f"{max_pixels / 1e6:.1f}; downscale it first"
        )
    if min(width, height) < min_side:
        raise InvalidImageError(f"image is {width}x{height}; each side must be at least {min_side} pixels")


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to "RGB", or to "RGBA" when the image carries transparency.

    Integer grey modes ("I", "I;16...") are taken as 16-bit data, which is how PIL opens 16-bit PNGs.
    """
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode in _ALPHA_MODES or (image.mode in ("P", "L") and "transparency" in image.info):
        return image.convert("RGBA")
    if image.mode in _HIGH_DEPTH_GREY_MODES:
        grey = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        return _grey_to_rgb(grey)
    if image.mode == "F":
        return _grey_to_rgb(np.asarray(image, dtype=np.float64))
    return image.convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """8-bit RGB from a grey array already scaled to 0..255 (values outside are clipped)."""
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey8[:, :, None], 3, axis=2))
