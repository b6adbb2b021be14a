"""Time Leffa denoising steps against one stock diffusers SD-inpainting UNet forward (random weights).

Usage: ``python bench/bench_sampler.py --base sd15-inpainting --height 512 --width 384 --repeats 3``

Measures, at batch 2 (classifier-free guidance on), interleaved so machine noise hits all equally:
- ``stock``: one stock ``UNet2DConditionModel`` forward of the base config (9 input channels, text
  cross-attention over 77 tokens);
- ``leffa_step``: one Leffa step with reference features computed (conditional reference UNet pass;
  unconditional features from the cache, as in every step after the first call);
- ``leffa_cached``: one Leffa step with all reference features given (reference acceleration);
and optionally a full generation of ``--steps`` steps. Prints a markdown table of medians and ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from diffusers import UNet2DConditionModel

from bench.common import add_model_options, set_threads, timed
from leffa.core.configs import load_base_configs
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--steps", type=int, default=0, help="also time a full generation of this many steps")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)

    configs = load_base_configs(args.base)
    model = LeffaModel.from_base(configs).eval()
    stock = UNet2DConditionModel.from_config(configs.unet).eval()
    factor = model.vae_scale_factor
    latent_hw = (args.height // factor, args.width // factor)
    pipe = LeffaPipeline(model)
    t = torch.tensor(500)
    noisy = torch.randn(2, 4, *latent_hw)
    mask = torch.ones(2, 1, *latent_hw)
    masked = torch.randn(2, 4, *latent_hw)
    dense = torch.randn(2, 3, *latent_hw)
    ref = torch.randn(1, 4, *latent_hw)
    stock_in = torch.randn(2, configs.unet["in_channels"], *latent_hw)
    text = torch.randn(2, 77, configs.unet["cross_attention_dim"])
    added = None
    if configs.unet.get("addition_embed_type") == "text_time":
        added = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)}

    with torch.no_grad():
        cached = pipe._features(ref, t, cfg=True)

        def run_stock():
            stock(stock_in, t, encoder_hidden_states=text, added_cond_kwargs=added)

        def run_step():
            model.predict_noise(noisy, mask, masked, dense, t, pipe._features(ref, t, cfg=True))

        def run_cached():
            model.predict_noise(noisy, mask, masked, dense, t, cached)

        runs = {"stock": run_stock, "leffa_step": run_step, "leffa_cached": run_cached}
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))

    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"config: {args.base} {args.height}x{args.width} fp32 batch 2 (CFG), repeats {args.repeats}\n")
    print("| measurement | median s | ratio to stock UNet |")
    print("|---|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.3f} | {value / med['stock']:.2f} |")
    if args.steps:
        src = torch.rand(1, 3, args.height, args.width) * 2 - 1
        image_mask = torch.ones(1, 1, args.height, args.width)
        seconds = timed(
            lambda: pipe(src, src, image_mask, src, num_inference_steps=args.steps, seed=0, output_type="np")
        )
        print(f"| full generation, {args.steps} steps | {seconds:.2f} | {seconds / med['stock']:.1f} |")


if __name__ == "__main__":
    main()
