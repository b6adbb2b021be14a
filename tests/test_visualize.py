"""Tests for the attention/flow pictures (leffa/inspect/visualize.py)."""

import colorsys
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import flow_to_image

from leffa.core.flow import reference_grid
from leffa.inspect.visualize import (
    aggregate_rows,
    attention_heatmap,
    color_wheel_legend,
    flow_to_color,
    jet,
    overlay_heatmap,
    query_row,
    query_token_index,
    side_by_side,
    upsample_attention,
)


def identity_flow(height, width):
    return reference_grid(height, width).reshape(height, width, 2).numpy()


def shifted_flow(height, width, dx_pixels, dy_pixels):
    """Identity flow displaced by a constant number of pixels of the flow grid."""
    shift = np.array([dx_pixels * 2 / (width - 1), dy_pixels * 2 / (height - 1)])
    return identity_flow(height, width) + shift


def hue_degrees(rgb):
    return 360 * colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))[0]


# flow_to_color and the legend


def test_zero_displacement_is_white():
    colors = flow_to_color(identity_flow(4, 6))
    assert colors.dtype == np.uint8 and colors.shape == (4, 6, 3)
    assert (colors == 255).all()


def test_cardinal_directions_have_the_middlebury_colours():
    right = flow_to_color(shifted_flow(5, 5, 1, 0))[2, 2]
    left = flow_to_color(shifted_flow(5, 5, -1, 0))[2, 2]
    assert right.tolist() == [255, 0, 0]
    assert left[0] < 30 and left[1] > 200 and left[2] > 100
    assert np.unique(flow_to_color(shifted_flow(5, 5, 0, 1)).reshape(-1, 3), axis=0).shape == (1, 3)


def test_hue_increases_as_the_direction_turns_from_right_through_down_left_and_up():
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    hues = []
    for angle in angles:
        flow = shifted_flow(9, 9, 2 * np.cos(angle), 2 * np.sin(angle))
        hues.append(hue_degrees(flow_to_color(flow, max_magnitude=2.0)[4, 4]))
    hues[0] = 0.0
    assert all(later > earlier for earlier, later in pairwise(hues))


def test_saturation_grows_with_magnitude_and_larger_than_max_is_darkened():
    """torchvision floors 255 * colour: half saturation of red is 127, darkened full red floor(0.75 * 255)."""
    small = flow_to_color(shifted_flow(5, 5, 0.5, 0), max_magnitude=1.0)[2, 2]
    full = flow_to_color(shifted_flow(5, 5, 1.0, 0), max_magnitude=1.0)[2, 2]
    beyond = flow_to_color(shifted_flow(5, 5, 2.0, 0), max_magnitude=1.0)[2, 2]
    assert small.tolist() == [255, 127, 127]
    assert full.tolist() == [255, 0, 0]
    assert beyond.tolist() == [191, 0, 0]


def test_colours_are_torchvisions_flow_to_image_of_the_offsets():
    """Absolute grid_sample positions become offsets in grid pixels, then torchvision colours them."""
    height, width = 6, 9
    offsets = np.random.default_rng(0).normal(size=(2, height, width))
    positions = identity_flow(height, width) + np.stack(
        [offsets[0] * 2 / (width - 1), offsets[1] * 2 / (height - 1)], axis=-1
    )
    expected = flow_to_image(torch.from_numpy(offsets).float()).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(flow_to_color(positions).astype(int) - expected).max() <= 1
    # A fixed scale: torchvision normalises by the longest offset, so add one column of that length.
    scale = 2 * float(np.hypot(*offsets).max())
    padded = np.concatenate([offsets, np.stack([np.full((height, 1), scale), np.zeros((height, 1))])], 2)
    expected = flow_to_image(torch.from_numpy(padded).float())[:, :, :width].permute(1, 2, 0).numpy()
    fixed = flow_to_color(positions, max_magnitude=scale)
    assert np.abs(fixed.astype(int) - expected.astype(int)).max() <= 1 and fixed.min() >= 127


def test_displacement_is_measured_in_pixels_of_the_flow_grid():
    wide = shifted_flow(3, 21, 1, 1)
    assert len({hue_degrees(color) for color in flow_to_color(wide).reshape(-1, 3)}) == 1
    diagonal = flow_to_color(wide)[1, 10]
    reference = flow_to_color(shifted_flow(9, 9, 1, 1))[4, 4]
    assert diagonal.tolist() == reference.tolist()


def test_flow_to_color_accepts_tensors_and_rejects_bad_input():
    assert (flow_to_color(torch.from_numpy(identity_flow(2, 3))) == 255).all()
    with pytest.raises(ValueError, match=r"\(h, w, 2\)"):
        flow_to_color(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="max_magnitude must be > 0"):
        flow_to_color(identity_flow(2, 3), max_magnitude=0.0)


def test_legend_is_a_white_backed_disc_matching_flow_colours():
    legend = color_wheel_legend(65)
    assert legend.shape == (65, 65, 3) and legend.dtype == np.uint8
    assert legend[32, 32].tolist() == [255, 255, 255]
    assert legend[0, 0].tolist() == [255, 255, 255]
    assert legend[32, 64].tolist() == [255, 0, 0]
    below = flow_to_color(shifted_flow(5, 5, 0, 1))[2, 2]
    assert legend[64, 32].tolist() == below.tolist()
    with pytest.raises(ValueError, match="size must be an int >= 2"):
        color_wheel_legend(1)


# heatmaps


def test_upsampled_one_hot_attention_peaks_at_the_attended_token():
    key_size, out_size = (4, 5), (13, 17)
    row = np.zeros(20)
    row[2 * 5 + 3] = 1.0
    heat = upsample_attention(row, key_size, out_size)
    assert heat.shape == out_size and heat.dtype == np.float32
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert peak == (2 * 12 // 3, 3 * 16 // 4)
    assert heat[peak] == pytest.approx(1.0)


def test_attention_heatmap_overlays_the_colormap_at_the_peak():
    key_size = (3, 3)
    row = torch.zeros(9)
    row[4] = 0.25
    image = np.full((9, 11, 3), 100, dtype=np.uint8)
    overlay = attention_heatmap(row, key_size, Image.fromarray(image), alpha=0.5)
    assert overlay.shape == (9, 11, 3) and overlay.dtype == np.uint8
    expected_peak = np.round(255 * (0.5 * 100 / 255 + 0.5 * jet(np.array(1.0)))).astype(np.uint8)
    assert overlay[4, 5].tolist() == expected_peak.tolist()
    expected_corner = np.round(255 * (0.5 * 100 / 255 + 0.5 * jet(np.array(0.0)))).astype(np.uint8)
    assert overlay[0, 0].tolist() == expected_corner.tolist()


def test_jet_runs_from_dark_blue_to_dark_red():
    assert jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]]


def test_overlay_rejects_bad_arguments():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown colormap 'viridis'"):
        overlay_heatmap(np.zeros((4, 4)), image, colormap="viridis")
    with pytest.raises(ValueError, match="must match the image size"):
        overlay_heatmap(np.zeros((3, 4)), image)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        overlay_heatmap(np.zeros((4, 4)), image, alpha=2.0)
    with pytest.raises(ValueError, match=r"uint8 array \(H, W, 3\)"):
        overlay_heatmap(np.zeros((4, 4)), image.astype(np.float32))
    with pytest.raises(ValueError, match="h_k\\*w_k = 6"):
        attention_heatmap(np.ones(5), (2, 3), image)


# picking and aggregating rows


def test_query_row_picks_the_nearest_query_token():
    attn = torch.arange(12 * 7, dtype=torch.float32).reshape(12, 7)
    query_size, image_size = (3, 4), (9, 13)
    assert query_token_index((0, 0), query_size, image_size) == 0
    assert query_token_index((12, 8), query_size, image_size) == 11
    assert query_token_index((4.1, 4.0), query_size, image_size) == 1 * 4 + 1
    assert query_token_index((6.1, 5.9), query_size, image_size) == 1 * 4 + 2
    torch.testing.assert_close(query_row(attn, query_size, (8.2, 0.5), image_size), attn[2])


def test_query_row_rejects_points_outside_and_bad_shapes():
    with pytest.raises(ValueError, match="outside the image"):
        query_token_index((13, 0), (3, 4), (9, 13))
    with pytest.raises(ValueError, match=r"n_q = 12"):
        query_row(np.zeros((10, 3)), (3, 4), (0, 0), (9, 13))


def test_aggregate_rows_averages_densities_across_key_grids():
    uniform_coarse = np.full(4, 1 / 4)
    uniform_fine = np.full(16, 1 / 16)
    average = aggregate_rows([uniform_coarse, uniform_fine], [(2, 2), (4, 4)], (7, 7))
    np.testing.assert_allclose(average, np.ones((7, 7)), rtol=1e-6)
    coarse = np.zeros(4)
    coarse[0] = 1.0
    fine = np.zeros(16)
    fine[0] = 1.0
    combined = aggregate_rows([coarse, fine], [(2, 2), (4, 4)], (7, 7))
    expected = (
        4 * upsample_attention(coarse, (2, 2), (7, 7)) + 16 * upsample_attention(fine, (4, 4), (7, 7))
    ) / 2
    np.testing.assert_allclose(combined, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="2 rows but 1 key sizes"):
        aggregate_rows([coarse, fine], [(2, 2)], (7, 7))


# panels


def test_side_by_side_resizes_to_a_common_height_and_adds_labels():
    red = np.zeros((20, 10, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = np.zeros((10, 10, 3), dtype=np.uint8)
    blue[..., 2] = 255
    panel = side_by_side([red, blue], gap=4)
    assert panel.shape == (20, 10 + 4 + 20, 3)
    assert panel[5, 5].tolist() == [255, 0, 0]
    assert panel[5, 12].tolist() == [255, 255, 255]
    assert panel[5, 20].tolist() == [0, 0, 255]
    labelled = side_by_side([red, blue], ["flow", "warped"])
    strip = labelled.shape[0] - 20
    assert strip > 0 and labelled.shape[1] == 34
    assert (labelled[:strip] < 128).any()
    assert labelled[strip + 5, 5].tolist() == [255, 0, 0]


def test_side_by_side_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        side_by_side([np.zeros((2, 2, 3), np.uint8)] * 2, ["one"])
    with pytest.raises(ValueError, match="images is empty"):
        side_by_side([])
