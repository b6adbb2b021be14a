"""Pictures of attention and flow: heatmaps over the reference, flow colour wheels and labelled panels.

Token positions follow ``leffa.core.flow`` (``align_corners=True``): on an ``H x W`` image the tokens of an
``h x w`` map sit at pixels ``(j * (W - 1) / (w - 1), i * (H - 1) / (h - 1))``, so the first and last tokens
are on the image corners. A map pooled from a larger token grid (pass that grid as ``token_size``) has its
cells at their block centres instead (:mod:`leffa.inspect.grids`). Image sizes are ``(height, width)``;
points are ``(x, y)`` in pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import flow_to_image

from leffa.common import check_grid_size
from leffa.inspect.grids import cell_under, grid_to_image

ArrayLike = np.ndarray | torch.Tensor

# Float32 positions carry ~1e-5 pixel rounding noise: displacements shorter than this are drawn as none
# (white), and the automatic colour scale never goes below it, so a still field is not amplified noise.
_STILL_PIXELS = 1e-3
# Middlebury's coding darkens displacements beyond the colour scale by this factor (torchvision has no
# such case: it always scales the largest displacement to full saturation).
_BEYOND_SCALE_SHADE = 0.75


def _to_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def _scaled_offsets_to_color(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``torchvision.utils.flow_to_image`` colours (uint8 (h, w, 3)) of offsets in units of the colour scale.

    Offsets up to length 1 get saturation equal to their length; longer ones are drawn at full saturation
    and darkened by ``_BEYOND_SCALE_SHADE``, as in the Middlebury reference code.
    """
    offsets = torch.from_numpy(np.stack([u, v])).float()
    length = offsets.norm(dim=0)
    beyond = length > 1
    offsets = offsets / length.clamp(min=1)
    # flow_to_image divides by the batch's longest offset; a companion image of unit offsets pins it to 1.
    unit = torch.stack([torch.ones_like(length), torch.zeros_like(length)])
    colors = flow_to_image(torch.stack([offsets, unit]))[0].permute(1, 2, 0).numpy()
    colors[beyond.numpy()] = (colors[beyond.numpy()] * _BEYOND_SCALE_SHADE).astype(np.uint8)
    return colors


def flow_to_color(flow: ArrayLike, *, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code how an absolute flow ``(h, w, 2)`` departs from the identity, as uint8 ``(h, w, 3)``.

    The flow holds ``grid_sample`` positions in [-1, 1]; the colours are torchvision's ``flow_to_image``
    (Baker et al.'s Middlebury wheel) of the offsets from each token's own position, measured in pixels of
    the flow's own ``h x w`` grid (upsample the flow first to read it in image pixels), so directions are
    true angles even when ``h != w``. White is no motion (offsets under 1e-3 pixel count as none); right is
    red, down yellow-green, left cyan, up blue-violet (image y points down). Saturation grows with
    magnitude up to ``max_magnitude`` (default: the largest offset in the field, at least 1e-3 pixel);
    larger ones are shown darkened.
    """
    positions = _to_numpy(flow)
    if positions.ndim != 3 or positions.shape[-1] != 2:
        raise ValueError(f"flow must have shape (h, w, 2) of normalised positions, got {positions.shape}")
    if max_magnitude is not None and not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be > 0 (pixels), got {max_magnitude}")
    height, width, _ = positions.shape
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    u = (positions[..., 0] + 1) * (width - 1) / 2 - columns
    v = (positions[..., 1] + 1) * (height - 1) / 2 - rows
    still = np.hypot(u, v) < _STILL_PIXELS
    u[still], v[still] = 0.0, 0.0
    if max_magnitude is None:
        max_magnitude = max(float(np.hypot(u, v).max()), _STILL_PIXELS)
    return _scaled_offsets_to_color(u / max_magnitude, v / max_magnitude)


def color_wheel_legend(size: int = 128) -> np.ndarray:
    """A ``size x size`` uint8 disc with the colour of each offset direction (rim: full scale), on white."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an int >= 2 (pixels), got {size!r}")
    centre = (size - 1) / 2
    columns, rows = np.meshgrid(np.arange(size), np.arange(size))
    u = (columns - centre) / centre
    v = (rows - centre) / centre
    outside = np.hypot(u, v) > 1
    legend = _scaled_offsets_to_color(np.where(outside, 0.0, u), np.where(outside, 0.0, v))
    legend[outside] = 255
    return legend


def jet(values: np.ndarray) -> np.ndarray:
    """The classic jet colormap: ``[0, 1] -> RGB in [0, 1]`` (dark blue, cyan, yellow, dark red)."""
    scaled = 4 * np.clip(values, 0, 1)[..., None]
    return np.clip(1.5 - np.abs(scaled - np.array([3.0, 2.0, 1.0])), 0, 1)


def gray(values: np.ndarray) -> np.ndarray:
    """Greyscale colormap: ``[0, 1] -> RGB in [0, 1]``."""
    return np.repeat(np.clip(values, 0, 1)[..., None], 3, axis=-1)


COLORMAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"jet": jet, "gray": gray}


def _image_to_array(image: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"{name} must be a PIL image or a uint8 array (H, W, 3), got {array.dtype} {array.shape}"
        )
    return array


def upsample_attention(
    attn_row: ArrayLike,
    key_size: tuple[int, int],
    out_size: tuple[int, int],
    token_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """One attention row reshaped to the key grid and resized bilinearly to ``out_size`` (float32).

    ``token_size``: the layer's token grid when the row was pooled from it to ``key_size`` (default: not
    pooled); each pooled cell is then drawn at its block centre, not stretched to the image edges.
    """
    h_k, w_k = check_grid_size(key_size, "key_size")
    out_size = check_grid_size(out_size, "out_size")
    token_size = _token_grid(token_size, key_size)
    row = _to_numpy(attn_row)
    if row.size != h_k * w_k or row.ndim not in (1, 2):
        raise ValueError(
            f"attn_row must hold h_k*w_k = {h_k * w_k} values for key_size {key_size}, "
            f"got shape {tuple(row.shape)}"
        )
    return grid_to_image(row.reshape(h_k, w_k), token_size, out_size).astype(np.float32)


def _token_grid(token_size: tuple[int, int] | None, cells: tuple[int, int]) -> tuple[int, int]:
    """The token grid a map of ``cells`` was pooled from (``None``: not pooled), checked."""
    if token_size is None:
        return cells
    token_size = check_grid_size(token_size, "token_size")
    if token_size[0] < cells[0] or token_size[1] < cells[1]:
        raise ValueError(f"token_size {token_size} is smaller than the map's grid {cells}; it cannot be pooled from it")
    return token_size


def overlay_heatmap(
    heat: np.ndarray, image: Image.Image | np.ndarray, *, alpha: float = 0.5, colormap: str = "jet"
) -> np.ndarray:
    """Normalise ``heat`` (H, W) by its maximum, colourise it and blend it over the image; uint8."""
    pixels = _image_to_array(image)
    if heat.shape != pixels.shape[:2]:
        raise ValueError(f"heat {heat.shape} must match the image size {pixels.shape[:2]}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    peak = float(heat.max())
    normalised = heat / peak if peak > 0 else np.zeros_like(heat)
    blended = (1 - alpha) * pixels / 255 + alpha * COLORMAPS[colormap](normalised)
    return np.round(255 * blended).astype(np.uint8)


def attention_heatmap(
    attn_row: ArrayLike,
    key_size: tuple[int, int],
    image: Image.Image | np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> np.ndarray:
    """Where one target token looks in the reference: its attention row overlaid on the reference image."""
    pixels = _image_to_array(image)
    heat = upsample_attention(attn_row, key_size, pixels.shape[:2])
    return overlay_heatmap(heat, pixels, alpha=alpha, colormap=colormap)


def query_token_index(
    point_xy: tuple[float, float],
    query_size: tuple[int, int],
    image_size: tuple[int, int],
    token_size: tuple[int, int] | None = None,
) -> int:
    """Row-major index of the query cell under pixel ``(x, y)`` of an image of ``(height, width)``: the
    nearest token, or with ``token_size`` (the grid ``query_size`` was pooled from) the cell holding it."""
    h_q, w_q = check_grid_size(query_size, "query_size")
    height, width = check_grid_size(image_size, "image_size")
    tokens_h, tokens_w = _token_grid(token_size, (h_q, w_q))
    x, y = point_xy
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        raise ValueError(
            f"point {point_xy} lies outside the image: x must be in [0, {width - 1}], y in [0, {height - 1}]"
        )
    return cell_under(y, tokens_h, h_q, height) * w_q + cell_under(x, tokens_w, w_q, width)


def query_row(
    attn: ArrayLike,
    query_size: tuple[int, int],
    point_xy: tuple[float, float],
    image_size: tuple[int, int],
) -> ArrayLike:
    """The attention row ``(n_k,)`` of the query token under a clicked point of the output image."""
    h_q, w_q = check_grid_size(query_size, "query_size")
    if attn.ndim != 2 or attn.shape[0] != h_q * w_q:
        raise ValueError(
            f"attn must have shape (n_q, n_k) with n_q = {h_q * w_q} for query_size {query_size}, "
            f"got {tuple(attn.shape)}"
        )
    return attn[query_token_index(point_xy, query_size, image_size)]


def aggregate_rows(
    rows: Sequence[ArrayLike],
    key_sizes: Sequence[tuple[int, int]],
    out_size: tuple[int, int],
    token_sizes: Sequence[tuple[int, int] | None] | None = None,
) -> np.ndarray:
    """Average attention rows of different key grids (layers, timesteps) on one ``out_size`` map, float32.

    Each row is first multiplied by its number of keys, so every layer is a density relative to uniform
    attention (uniform = 1 everywhere) and coarse layers do not dominate just because they have fewer keys.
    ``token_sizes``: per row, the token grid it was pooled from (see :func:`upsample_attention`).
    """
    if not rows:
        raise ValueError("rows is empty: pass at least one attention row to aggregate")
    if len(rows) != len(key_sizes):
        raise ValueError(f"got {len(rows)} rows but {len(key_sizes)} key sizes; pass one key size per row")
    token_sizes = [None] * len(rows) if token_sizes is None else list(token_sizes)
    if len(token_sizes) != len(rows):
        raise ValueError(f"got {len(rows)} rows but {len(token_sizes)} token sizes; pass one per row")
    total = np.zeros(check_grid_size(out_size, "out_size"), dtype=np.float64)
    for row, key_size, token_size in zip(rows, key_sizes, token_sizes, strict=True):
        h_k, w_k = check_grid_size(key_size, "key_size")
        total += h_k * w_k * upsample_attention(row, key_size, out_size, token_size)
    return (total / len(rows)).astype(np.float32)


def side_by_side(
    images: Sequence[Image.Image | np.ndarray], labels: Sequence[str] | None = None, *, gap: int = 4
) -> np.ndarray:
    """Panels resized to a common height, left to right on white, each with its label above; uint8."""
    if not images:
        raise ValueError("images is empty: pass at least one image")
    if gap < 0:
        raise ValueError(f"gap must be >= 0 pixels, got {gap}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels; pass one label per image")
    arrays = [_image_to_array(image, f"images[{index}]") for index, image in enumerate(images)]
    height = max(array.shape[0] for array in arrays)
    panels = [
        Image.fromarray(array).resize((max(1, round(array.shape[1] * height / array.shape[0])), height))
        for array in arrays
    ]
    font = ImageFont.load_default()
    label_height = 0
    if labels is not None:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_height = max(measure.textbbox((0, 0), label or " ", font=font)[3] for label in labels) + 6
    width = sum(panel.width for panel in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for index, panel in enumerate(panels):
        canvas.paste(panel, (left, label_height))
        if labels is not None:
            text_width = draw.textbbox((0, 0), labels[index], font=font)[2]
            draw.text((left + (panel.width - text_width) / 2, 3), labels[index], fill="black", font=font)
        left += panel.width + gap
    return np.asarray(canvas)
