"""Tests for the helpers shared by preprocess/ and leffa/ (leffa/common.py)."""

import numpy as np
import pytest
import torch

from leffa.common import (
    IMAGE_SUFFIXES,
    CheckpointMismatchError,
    check_device,
    check_grid_size,
    check_state_dict,
    resolve_device,
)


def test_auto_device_is_an_available_one():
    device = resolve_device("auto")
    assert device == resolve_device(None)
    assert device.type in {"cpu", "cuda", "mps"}
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available; use device 'cpu' or 'auto'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' requested"):
        check_device(torch.device("cuda:1"))


def test_state_dict_check_names_missing_unexpected_and_wrong_shapes():
    expected = {"a": torch.zeros(2, 3), "b": (4,), "c": np.zeros(1)}
    check_state_dict(expected, {"a": np.zeros((2, 3)), "b": torch.zeros(4), "c": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError) as info:
        check_state_dict(expected, {"a": torch.zeros(3, 2), "b": torch.zeros(4), "z": torch.zeros(1)},
                         what="the net", hint="try base='tiny'")
    assert str(info.value) == (
        "checkpoint does not match the net: 1 missing keys: c; 1 unexpected keys: z; "
        "1 wrong shapes (checkpoint != model): a (3, 2) != (2, 3). try base='tiny'"
    )


def test_state_dict_check_lists_at_most_five_names():
    expected = {f"k{i}": (1,) for i in range(8)}
    with pytest.raises(CheckpointMismatchError, match=r"8 missing keys: k0, k1, k2, k3, k4 \(and 3 more\)$"):
        check_state_dict(expected, {})


@pytest.mark.parametrize("bad", [(0, 3), (2,), (2.0, 3), (True, 3), (2, 3, 4)])
def test_grid_size_must_be_two_positive_ints(bad):
    with pytest.raises(ValueError, match=r"size must be a pair of positive ints \(height, width\)"):
        check_grid_size(bad, "size")
    assert check_grid_size((2, 3), "size") == (2, 3)


def test_image_suffixes_are_lower_case_with_dot():
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert {".jpg", ".jpeg", ".png", ".webp"} <= set(IMAGE_SUFFIXES)
