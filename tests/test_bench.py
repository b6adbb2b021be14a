"""The benchmark's re-creation of the released per-step work computes what this project computes."""

from __future__ import annotations

import torch

from bench.bench_exactness import Inputs, ours_parts, released_parts, run_step
from bench.released import ReleasedStep


def test_released_step_equals_ours_on_the_same_weights(tiny_model):
    inputs = Inputs.random((8, 6), seed=4)
    released = ReleasedStep(tiny_model)
    _, theirs = run_step(released_parts(released, inputs))
    _, ours = run_step(ours_parts(tiny_model, inputs))
    assert theirs.shape == ours.shape == (2, 4, 8, 6)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_released_step_runs_the_reference_unet_in_full_at_batch_two(tiny_model):
    released = ReleasedStep(tiny_model)
    seen = []
    hook = released.reference_unet.conv_out.register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    try:
        features = released.reference_pass(torch.randn(1, 4, 8, 6), torch.tensor(10))
    finally:
        hook.remove()
    assert seen == [2]
    assert list(features) == tiny_model.layers
    assert all(tensor.shape[0] == 2 for tensor in features.values())


def test_released_step_shares_the_weights_and_leaves_the_model_alone(tiny_model):
    processors = dict(tiny_model.unet.attn_processors)
    released = ReleasedStep(tiny_model)
    assert released.generative_unet.conv_in.weight.data_ptr() == tiny_model.unet.conv_in.weight.data_ptr()
    assert released.reference_unet.conv_in.weight.data_ptr() == tiny_model.unet_encoder.conv_in.weight.data_ptr()
    assert dict(tiny_model.unet.attn_processors) == processors
