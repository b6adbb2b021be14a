"""Metrics of the synthetic benchmark against hand computations, and the data helpers they run on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from leffa.eval.metrics import ssim
from train.synthetic.data import SyntheticTryOnDataset, render_split, sample_seed
from train.synthetic.people import make_sample
from train.synthetic.eval import (
    STUDY_INITS,
    EvalSettings,
    evaluate_model,
    flow_epe,
    free_attention_study,
    identity_flow,
    masked_l1,
    masked_psnr,
    masked_ssim,
    reference_flow_scores,
    teacher_forced,
    to_batch,
    uniform_attention_flow,
    warp_l1,
)
from train.config import ConfigError, load_config
from train.synthetic.vae import VaeTrainConfig, build_vae, reconstruction_loss

# ------------------------------------------------------------------------------------------ flow error


def test_flow_epe_matches_hand_computation() -> None:
    # 2 x 3 image: pixel units are (W - 1) / 2 = 1 in x and (H - 1) / 2 = 0.5 in y.
    true = torch.zeros(1, 2, 3, 2)
    pred = true.clone()
    pred[0, 0, 0] = torch.tensor([3.0, 0.0])  # 3 px in x
    pred[0, 0, 1] = torch.tensor([0.0, 8.0])  # 4 px in y
    pred[0, 1, 2] = torch.tensor([3.0, 8.0])  # 5 px, but not valid
    valid = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    expected = (3.0 + 4.0 + 0.0 + 0.0) / 4
    torch.testing.assert_close(flow_epe(pred, true, valid), torch.tensor([expected]))


def test_identity_flow_against_a_one_pixel_shift_gives_one_pixel() -> None:
    height, width = 16, 12
    true = identity_flow(2, height, width)
    true[..., 0] += 2.0 / (width - 1)  # every pixel shows the garment pixel one to its right
    valid = torch.ones(2, height, width)
    torch.testing.assert_close(flow_epe(identity_flow(2, height, width), true, valid), torch.ones(2))


def test_coarse_flow_is_upsampled_before_scoring() -> None:
    """An identity flow on the token grid upsamples (align_corners) to the image's identity flow."""
    coarse = identity_flow(1, 4, 3)
    fine = identity_flow(1, 32, 24)
    assert float(flow_epe(coarse, fine, torch.ones(1, 32, 24))) < 1e-5


def test_uniform_attention_flow_points_at_the_reference_centre() -> None:
    for key_size in ((4, 3), (5, 7)):
        flow = uniform_attention_flow(2, (3, 2), key_size)
        assert flow.shape == (2, 3, 2, 2)
        torch.testing.assert_close(flow, torch.zeros_like(flow), atol=1e-6, rtol=0)


def test_flow_baselines_on_rendered_samples() -> None:
    split = render_split("test", 3, (64, 48))
    scores = reference_flow_scores(split)
    assert scores["true/epe"] == 0.0
    assert scores["true/warp_l1"] < 2e-3  # the person's garment pixels are bilinear garment samples
    assert scores["identity/epe"] > 1.0 and scores["uniform/epe"] > scores["identity/epe"]


# ------------------------------------------------------------------------------------- image metrics


def _images(seed: int, shape=(2, 3, 13, 14)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    region = (torch.rand(shape[0], 1, *shape[2:], generator=gen) > 0.4).float()
    return a, b, region


def test_masked_l1_and_psnr_match_naive_loops() -> None:
    a, b, region = _images(0)
    for i in range(a.shape[0]):
        diffs = [
            float(a[i, c, y, x] - b[i, c, y, x])
            for c in range(3)
            for y in range(a.shape[2])
            for x in range(a.shape[3])
            if region[i, 0, y, x] > 0
        ]
        l1 = sum(abs(d) for d in diffs) / len(diffs)
        psnr = 10 * math.log10(1 / (sum(d * d for d in diffs) / len(diffs)))
        assert float(masked_l1(a, b, region)[i]) == pytest.approx(l1, abs=1e-5)
        assert float(masked_psnr(a, b, region)[i]) == pytest.approx(psnr, abs=1e-4)


def test_masked_ssim_with_full_region_equals_plain_ssim() -> None:
    a, b, _ = _images(1, (2, 3, 24, 20))
    full = torch.ones(2, 24, 20)
    torch.testing.assert_close(masked_ssim(a, b, full), ssim(a, b), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_ssim(a, a, full), torch.ones(2), atol=1e-6, rtol=0)


def test_masked_ssim_averages_the_map_over_the_region() -> None:
    """Naive SSIM map: explicit Gaussian-weighted sums per pixel over the 5-pixel reflect-padded images
    (as torchmetrics pads), mean over channels."""
    a, b, region = _images(2, (1, 3, 13, 14))
    taps = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    window = torch.outer(taps, taps) / taps.sum() ** 2
    x, y = (torch.nn.functional.pad(t.double(), (5, 5, 5, 5), mode="reflect")[0] for t in (a, b))
    total, weight = 0.0, 0.0
    for top in range(13):
        for left in range(14):
            if region[0, 0, top, left] == 0:
                continue
            values = []
            for c in range(3):
                px, py = x[c, top : top + 11, left : left + 11], y[c, top : top + 11, left : left + 11]
                mx, my = (window * px).sum(), (window * py).sum()
                vx = (window * px * px).sum() - mx**2
                vy = (window * py * py).sum() - my**2
                cov = (window * px * py).sum() - mx * my
                c1, c2 = 0.01**2, 0.03**2
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
            total += float(sum(values) / 3)
            weight += 1.0
    assert float(masked_ssim(a, b, region)[0]) == pytest.approx(total / weight, abs=1e-5)


def test_metric_inputs_are_checked() -> None:
    a, b, region = _images(3)
    with pytest.raises(ValueError, match="region must have shape"):
        masked_l1(a, b, region[:, :, :5])
    with pytest.raises(ValueError, match="equal shape"):
        masked_psnr(a, b[:, :, :5], region)


def test_warp_l1_of_the_true_flow_is_near_zero_and_of_identity_is_not() -> None:
    split = render_split("test", 2, (64, 48))
    batch = to_batch(split, [0, 1])
    unit = {key: batch[key] / 2 + 0.5 for key in ("image", "reference")}
    valid = batch["flow_valid"]
    assert float(warp_l1(unit["reference"], unit["image"], batch["flow"], valid).max()) < 2e-3
    assert float(warp_l1(unit["reference"], unit["image"], identity_flow(2, 64, 48), valid).min()) > 0.02


# ----------------------------------------------------------------------------------------------- data


def test_render_split_matches_the_dataset_and_caches(tmp_path) -> None:
    split = render_split("test", 3, (64, 48), seed=1, cache_dir=tmp_path)
    cached = render_split("test", 3, (64, 48), seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    for key, value in split.items():
        np.testing.assert_array_equal(cached[key], value)
    sample = make_sample(sample_seed("test", 2, 1), (64, 48))
    np.testing.assert_array_equal(split["person"][2], sample.person)
    np.testing.assert_array_equal(split["flow"][2], sample.flow)
    item = SyntheticTryOnDataset("test", (64, 48), length=3, seed=1)[2]
    batch = to_batch(split, [2])
    for key in ("image", "reference", "mask", "densepose", "flow", "flow_valid"):
        torch.testing.assert_close(batch[key][0], item[key], atol=0, rtol=0)


def test_render_split_without_flows_and_bad_count() -> None:
    split = render_split("train", 2, (64, 48), with_flow=False)
    assert "flow" not in split and "flow" not in to_batch(split, [0])
    with pytest.raises(ValueError, match="count must be a positive int"):
        render_split("train", 0)


# ---------------------------------------------------------------------------------------- model probes


def test_teacher_forced_records_every_layer_and_is_seeded(tiny_model) -> None:
    batch = to_batch(render_split("test", 2, (64, 48)), [0, 1])
    first = teacher_forced(tiny_model, batch, (100, 300), seed=5)
    second = teacher_forced(tiny_model, batch, (100, 300), seed=5)
    assert set(first) == {100, 300}
    assert list(first[100]["flows"]) == tiny_model.layers
    assert first[100]["flows"][tiny_model.layers[0]].shape == (2, 8, 6, 2)
    assert first[300]["x0"].shape == (2, 3, 64, 48)
    assert 0 <= float(first[300]["x0"].min()) and float(first[300]["x0"].max()) <= 1
    for t in (100, 300):
        torch.testing.assert_close(first[t]["x0"], second[t]["x0"], atol=0, rtol=0)


def test_evaluate_model_reports_finite_metrics(tiny_model) -> None:
    split = render_split("test", 2, (64, 48))
    settings = EvalSettings(timesteps=(300,), num_inference_steps=3, sampler_trace_timesteps=(1,), batch_size=2)
    scores = evaluate_model(tiny_model, split, settings)
    for key in ("tf/t300/epe/mean", "tf/t300/garment_ssim", "sample/plain/garment_l1", "sample/accel/mask_l1",
                "sample/plain/t1/epe/mean", "tf/t300/epe/res/8x6"):
        assert math.isfinite(scores[key]), key
    assert all(math.isfinite(value) for value in scores.values())
    with pytest.raises(ValueError, match="with_flow=True"):
        evaluate_model(tiny_model, render_split("test", 1, (64, 48), with_flow=False), settings)


# ------------------------------------------------------------------------------------------- VAE stage


def test_reconstruction_loss_matches_naive_formula() -> None:
    a, b, _ = _images(4, (2, 3, 6, 5))
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    expected = (a - b).abs().mean() + 0.5 * (dy.abs().mean() + dx.abs().mean())
    torch.testing.assert_close(reconstruction_loss(a, b, 0.5), expected)


def test_vae_config_is_checked(tmp_path) -> None:
    shipped = load_config("train/configs/synthetic/vae.yaml", schema=VaeTrainConfig)
    vae = build_vae(shipped.vae_config)
    latent = vae.encode(torch.zeros(1, 3, *shipped.data.size)).latent_dist.mode()
    factor = 2 ** (len(shipped.vae_config["block_out_channels"]) - 1)
    assert factor == 4  # the 8x VAE learned no colour at this width (docs/synthetic-benchmark.md)
    assert latent.shape == (1, 4, shipped.data.size[0] // factor, shipped.data.size[1] // factor)
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\ndata: {length: 4}\ntrain: {max_steps: 3, batch_size: 1}\nbogus: 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(bad, schema=VaeTrainConfig)
    assert str(error.value).splitlines() == [
        f"{bad}: unknown config key bogus; valid keys in the config: output_dir, seed, data, vae_config, optim, train",
        "missing required config key train.kl_weight",
        "missing required config key train.gradient_weight",
    ]
    with pytest.raises(ConfigError, match=r"data\.type must be one of 'synthetic'; got 'vitonhd'"):
        load_config("train/configs/synthetic/vae.yaml", ["data.type=vitonhd"], schema=VaeTrainConfig)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml", schema=VaeTrainConfig)


# ------------------------------------------------------------------------------------- the loss on its own


def test_free_attention_study_starts_at_the_baselines_and_only_refines_peaked_attention() -> None:
    split = render_split("test", 2, (64, 48))
    baselines = reference_flow_scores(split)
    runs = {init: free_attention_study(split, init, token_grid=(8, 6), steps=30) for init in STUDY_INITS}
    assert runs["uniform"]["before/epe"] == pytest.approx(baselines["uniform/epe"], abs=1e-4)
    assert runs["true"]["before/epe"] < runs["identity"]["before/epe"] < runs["uniform"]["before/epe"]
    for init in ("identity", "true"):
        assert runs[init]["after/loss"] < runs[init]["before/loss"], init
    # From uniform attention every query sits on the reference centre: the loss's gradient is the
    # reference's image gradient there, the same for all queries, so it cannot pull flows apart.
    assert runs["uniform"]["after/loss"] <= runs["uniform"]["before/loss"] + 1e-6
    assert runs["uniform"]["after/epe"] > runs["uniform"]["before/epe"] - 0.5
    with pytest.raises(ValueError, match="init must be one of"):
        free_attention_study(split, "random")


# ---------------------------------------------------------------------------------------- stage configs


def test_benchmark_stage_configs_share_one_model_and_the_vae_stage() -> None:
    """Every stage of ``all`` loads as a synthetic trainer config, and differs from the others only in what
    the comparison varies (init, seed, steps, leffa); its VAE section is the VAE stage's architecture."""
    from train.synthetic.experiment import CONFIG_DIR, STAGES

    vae_stage = load_config(CONFIG_DIR / "vae.yaml", schema=VaeTrainConfig)
    configs = {name: load_config(CONFIG_DIR / f"{name}.yaml") for name in STAGES}
    for name, config in configs.items():
        assert config.output_dir == f"runs/synthetic/{name}"
        assert config.data.type == "synthetic" and config.data.cache_dir == vae_stage.data.cache_dir, name
        assert config.model.vae_path == f"{vae_stage.output_dir}/vae.safetensors", name
        assert config.logging.log_with == "jsonl", name  # train_info.json reads the final losses from it
        assert config.model.unet_config == configs["base"].model.unet_config, name
        assert config.model.vae_config == configs["base"].model.vae_config, name
        assert {k: v for k, v in config.model.vae_config.items() if k != "scaling_factor"} == vae_stage.vae_config
        assert config.model.init == ("random" if name == "base" else "checkpoint"), name
    # Fine-tunes compared with each other start from the same run with the same seed, steps and rate.
    groups: dict[str, set] = {}
    for name, config in configs.items():
        if name.endswith("finetune") or "leffa" in name:
            key = (config.seed, config.train.max_steps, config.optim.learning_rate)
            groups.setdefault(config.model.init_path, set()).add(key)
    assert sorted(groups) == ["runs/synthetic/base-long/model.safetensors", "runs/synthetic/base/model.safetensors"]
    assert all(len(keys) == 1 for keys in groups.values()), groups
    assert not configs["finetune"].leffa.enabled and not configs["long-finetune"].leffa.enabled
    assert configs["leffa"].leffa.loss_config().weight == pytest.approx(1e-3)
    assert configs["base-long"].model.init_path == "runs/synthetic/base/model.safetensors"


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate")
def test_vae_then_stages_train_through_the_one_trainer(tmp_path) -> None:
    """The benchmark's sequence, shrunk: the VAE loop, then a base and a fine-tune stage trained by
    ``train/train.py``'s trainer; each run folder loads as the model the trainer ended with."""
    from accelerate.state import AcceleratorState, GradientState

    from train.synthetic.experiment import CONFIG_DIR, load_run, train_stage
    from train.synthetic.vae import train_vae

    small = ("data.size=[64, 48]", f"data.cache_dir={tmp_path / 'cache'}", "data.length=8")
    vae_config = load_config(
        CONFIG_DIR / "vae.yaml",
        (f"output_dir={tmp_path / 'vae'}", *small, "train.max_steps=2", "train.batch_size=2",
         "train.crop=[32, 24]", "train.eval_count=2", "optim.warmup_steps=1"),
        schema=VaeTrainConfig,
    )
    metrics = train_vae(vae_config, log=lambda line: None)
    scale = json.loads((tmp_path / "vae" / "vae.json").read_text())["scaling_factor"]
    assert metrics["scaling_factor"] == pytest.approx(scale) and math.isfinite(metrics["garment_psnr"])

    stage = (*small, f"model.vae_path={tmp_path / 'vae' / 'vae.safetensors'}", "train.max_steps=2",
             "train.batch_size=2", "logging.log_every=1", "logging.progress_bar=false")
    base = load_config(CONFIG_DIR / "base.yaml",
                       (f"output_dir={tmp_path / 'base'}", *stage, f"model.vae_config.scaling_factor={scale}"))
    info = train_stage(base, log=lambda line: None)
    assert info["steps"] == 2 and math.isfinite(info["final_diffusion_loss"]) and info["final_leffa_loss"] is None
    model = load_run(tmp_path / "base")
    assert model.vae.config.scaling_factor == pytest.approx(scale)
    vae_weights = load_file(str(tmp_path / "vae" / "vae.safetensors"))
    assert all(torch.equal(model.vae.state_dict()[name], t) for name, t in vae_weights.items())
    assert (tmp_path / "base" / "checkpoints" / "step-00000002").is_dir()

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    leffa = load_config(
        CONFIG_DIR / "leffa-w1-tau1.yaml",
        (f"output_dir={tmp_path / 'leffa'}", *stage, f"model.vae_config.scaling_factor={scale}",
         f"model.init_path={tmp_path / 'base' / 'model.safetensors'}"),
    )
    assert math.isfinite(train_stage(leffa, log=lambda line: None)["final_leffa_loss"])
    tuned = load_run(tmp_path / "leffa")
    assert set(tuned.state_dict()) == set(model.state_dict())
    assert not torch.equal(tuned.state_dict()["unet.conv_in.weight"], model.state_dict()["unet.conv_in.weight"])
    with pytest.raises(ValueError, match="data.type must be synthetic"):
        train_stage(load_config(CONFIG_DIR.parent / "vitonhd-512.yaml"), log=lambda line: None)
