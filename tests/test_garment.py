"""Garment preparation (PNG with alpha) and image loading/validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from preprocess.garment import prepare_garment
from preprocess.images import InvalidImageError, load_image, open_image, to_rgb

RED = (200, 30, 30)


def _cutout(canvas=(400, 400), box=(50, 150, 250, 250), colour=RED) -> Image.Image:
    """A transparent canvas with one opaque rectangle at `box` (left, top, right, bottom)."""
    image = Image.new("RGBA", canvas, (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (box[2] - box[0], box[3] - box[1]), colour + (255,)), box[:2])
    return image


def test_cutout_is_squared_scaled_and_placed_like_the_release():
    result = np.asarray(prepare_garment(_cutout()))
    assert result.shape == (1024, 768, 3)
    # The 200x100 box becomes a 200x200 square (garment in its middle half) scaled to 768 at y=128;
    # 12 px margins leave out the LANCZOS ringing at the edges.
    assert (result[: 128 + 192 - 12] == 255).all()
    assert (result[128 + 576 + 12 :] == 255).all()
    assert (np.abs(result[128 + 192 + 12 : 128 + 576 - 12].astype(int) - RED) <= 1).all()


def test_cutout_matches_a_naive_crop_resize_paste():
    garment = _cutout(box=(30, 20, 130, 300))
    left, top, right, bottom = garment.getchannel("A").getbbox()
    side = max(right - left, bottom - top)
    cx, cy = left + (right - left - side) // 2, top + (bottom - top - side) // 2
    square = garment.crop((cx, cy, cx + side, cy + side)).resize((768, 768), Image.Resampling.LANCZOS)
    page = Image.new("RGB", (768, 1024), "white")
    page.paste(square, (0, 128), square)
    np.testing.assert_allclose(np.asarray(prepare_garment(garment), int), np.asarray(page, int), atol=1)


@pytest.mark.parametrize(
    ("size", "offset"), [((384, 512), (0, 64)), ((1024, 768), (128, 0)), ((300, 300), (0, 0))]
)
def test_other_sizes_keep_the_square_centred(size, offset):
    result = np.asarray(prepare_garment(_cutout(box=(100, 100, 300, 300)), size=size))
    assert result.shape == (size[1], size[0], 3)
    side = min(size)
    square = result[offset[1] : offset[1] + side, offset[0] : offset[0] + side]
    assert (np.abs(square[12:-12, 12:-12].astype(int) - RED) <= 1).all()
    outside = np.ones(result.shape[:2], bool)
    outside[offset[1] : offset[1] + side, offset[0] : offset[0] + side] = False
    assert (result[outside] == 255).all()


def test_garment_at_the_border_is_padded_with_white():
    result = np.asarray(prepare_garment(_cutout(box=(0, 0, 100, 300))))
    # Square of 300 centred on the box reaches 100 px left of the image: that third is white.
    assert (result[128:896, :240] == 255).all()
    assert (np.abs(result[140:880, 270:500].astype(int) - RED) <= 1).all()


def test_soft_alpha_is_composited_on_white():
    garment = _cutout()
    alpha = np.asarray(garment.getchannel("A")).copy()
    alpha[alpha == 255] = 128
    garment.putalpha(Image.fromarray(alpha))
    middle = np.asarray(prepare_garment(garment))[512, 384].astype(int)
    np.testing.assert_allclose(middle, [228, 142, 142], atol=2)


def test_empty_alpha_is_a_clear_error():
    with pytest.raises(ValueError, match="fully transparent"):
        prepare_garment(Image.new("RGBA", (100, 100), (255, 0, 0, 0)))


def test_images_without_transparency_are_returned_unchanged():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    for image in (rgb, rgb.convert("RGBA")):
        result = prepare_garment(image)
        assert result.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(result), np.asarray(rgb))


def test_invalid_output_size():
    with pytest.raises(ValueError, match="positive"):
        prepare_garment(_cutout(), size=(0, 100))


# --- image loading --------------------------------------------------------------------------------


def _saved(image: Image.Image, fmt: str, tmp_path, **kwargs):
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((80, 120, 3), np.uint8)
    rgb[:, :60] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    path = _saved(Image.fromarray(rgb), "JPEG", tmp_path, exif=exif, quality=95)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (120, 80, 3)
    assert loaded[:50].mean() > 240 and loaded[-50:].mean() < 15  # the white half is now on top


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:32, :, 3] = 255
    rgba[32:, :, 3] = 128
    rgba[:, :8, 3] = 0
    loaded = np.asarray(load_image(_saved(Image.fromarray(rgba), "PNG", tmp_path))).astype(int)
    assert (loaded[:32, 8:] == [255, 0, 0]).all()
    np.testing.assert_allclose(loaded[40, 20], [255, 127, 127], atol=1)
    assert (loaded[:, :8] == 255).all()


def test_modes_are_converted_to_rgb():
    grey = Image.new("L", (64, 64), 90)
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    deep = Image.fromarray(np.full((64, 64), 65535, np.uint16))
    grey_alpha = Image.new("LA", (64, 64), (0, 0))
    cases = [
        (grey, (90, 90, 90)),
        (cmyk, (255, 0, 0)),
        (palette, (10, 200, 30)),
        (deep, (255, 255, 255)),
        (grey_alpha, (255, 255, 255)),
    ]
    for image, colour in cases:
        loaded = load_image(image)
        assert loaded.mode == "RGB" and loaded.size == (64, 64), image.mode
        assert tuple(np.asarray(loaded)[5, 5]) == colour, image.mode


def test_palette_transparency_is_kept_by_open_image():
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    opened = open_image(palette)
    assert opened.mode == "RGBA" and opened.getpixel((0, 0))[3] == 0
    assert to_rgb(opened).getpixel((0, 0)) == (255, 255, 255)


def test_arrays_are_accepted_as_rgb_and_validated():
    array = np.zeros((70, 80, 3), np.uint8)
    array[..., 1] = 100
    assert load_image(array).getpixel((3, 3)) == (0, 100, 0)
    with pytest.raises(InvalidImageError, match="uint8"):
        load_image(array.astype(np.float32))
    with pytest.raises(InvalidImageError, match="shape"):
        load_image(np.zeros((70, 80, 2), np.uint8))
    with pytest.raises(InvalidImageError, match="file path, PIL image or numpy array"):
        load_image(b"bytes")


def test_bad_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InvalidImageError, match="not an image file"):
        load_image(text)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(buffer, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[:60])
    with pytest.raises(InvalidImageError, match=r"truncated\.png"):
        load_image(truncated)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_size_limits(tmp_path):
    with pytest.raises(InvalidImageError, match="at least 64 pixels"):
        load_image(Image.new("RGB", (63, 500)))
    with pytest.raises(InvalidImageError, match="megapixels"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5_000)
    huge = _saved(Image.new("1", (9_000, 5_000)), "PNG", tmp_path)  # 45 MP, a few KB on disk
    with pytest.raises(InvalidImageError, match=r"45\.0 megapixels"):
        load_image(huge)
