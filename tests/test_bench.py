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


def test_the_readme_memory_table_is_the_saved_measurement():
    from bench.memory_table import README, load, render, section

    assert section(README.read_text()) == render(load())


def test_the_memory_section_measures_every_level_and_writes_the_table(tmp_path):
    from bench import gpu, memory_table

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{memory_table.START}\nold\n{memory_table.END}\nrest\n")
    rows = gpu.memory_rows(gpu.Plan.make(quick=True), "tryon", "tiny", counts=(1, 2))
    assert [(row["level"], row["num_images"]) for row in rows] == [
        (level, count) for level in gpu.MEMORY_LEVELS for count in (1, 2)
    ]
    assert all("error" not in row and row["seconds_per_image"] > 0 for row in rows), rows
    measurement = dict(gpu="H100", date="2026-12-07", width=768, height=1024, steps=30, dtype="fp16", rows=[
        dict(task="tryon", level="none", num_images=1, seconds_per_image=2.5, peak_gib=5.25),
        dict(task="tryon", level="none", num_images=4, error="OutOfMemoryError: CUDA out of memory"),
    ])
    memory_table.update_readme(measurement, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert "| try-on (SD1.5 size) | none | 5.25 | 2.50 | failed | failed |" in text
    assert "Measured by `make bench-gpu` on H100 (2026-12-07): 768×1024, 30 steps, fp16" in text
