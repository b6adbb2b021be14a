"""Time and peak memory of one training forward+backward with and without the Leffa loss (random weights).

Usage: ``python bench/bench_leffa_loss.py --config mid --height 512 --width 384 --batch 2``

Times are the minimum over repeats with the two variants interleaved in one process (so machine load hits
both alike); peak memory (max RSS on CPU, max allocated on CUDA) comes from one subprocess per variant. ``mid`` is the SD1.5 UNet structure at a quarter of its widths (all 16 transformer layers, same token
counts as SD1.5 at the same resolution); ``sd15`` is the full model. For reference the table also gives the
memory that materialising every selected layer's full head-averaged map at once would take (the recorder
never does: it reduces each query chunk to flow immediately and recomputes it in the backward pass).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from leffa.core.configs import load_base_configs
from leffa.core.flow import LeffaLossConfig
from leffa.core.model import LeffaModel
from leffa.core.recording import layer_sizes, select_layers
from leffa.core.training import training_losses


def build(config: str, device: str) -> LeffaModel:
    base = load_base_configs("sd15-inpainting")
    unet = dict(base.unet)
    if config == "mid":
        unet["block_out_channels"] = [64, 128, 256, 256]
    elif config != "sd15":
        raise ValueError(f"unknown config {config!r}; use mid or sd15")
    return LeffaModel.from_config(unet, base.vae, base.scheduler, base="sd15-inpainting", device=device)


def _setup(args: argparse.Namespace):
    torch.manual_seed(0)
    model = build(args.config, args.device)
    model.vae.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(args.batch, 3, args.height, args.width, generator=gen) * 2 - 1,
        "reference": torch.rand(args.batch, 3, args.height, args.width, generator=gen) * 2 - 1,
        "mask": torch.ones(args.batch, 1, args.height, args.width),
        "densepose": torch.rand(args.batch, 3, args.height, args.width, generator=gen) * 2 - 1,
    }
    return model, model.make_scheduler(), batch, gen


# Every sample below θ_timestep so the loss really runs (in training about half the samples are).
VARIANTS = {"none": None, "leffa": LeffaLossConfig(theta_timestep=1000)}


def _step(model, scheduler, batch, gen, leffa, device: str) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    losses = training_losses(model, batch, scheduler, generator=gen, leffa=leffa, reference_dropout=0.0)
    losses.loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory(args: argparse.Namespace) -> dict:
    model, scheduler, batch, gen = _setup(args)
    _step(model, scheduler, batch, gen, VARIANTS[args.variant], args.device)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": args.variant, "peak_mib": peak}


def interleaved_times(args: argparse.Namespace) -> dict[str, float]:
    model, scheduler, batch, gen = _setup(args)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats + 1):
        for name, leffa in VARIANTS.items():
            seconds = _step(model, scheduler, batch, gen, leffa, args.device)
            if repeat:
                times[name].append(seconds)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mid", choices=["mid", "sd15"])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["none", "leffa"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(peak_memory(args)))
        return
    peaks = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[variant] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    seconds = interleaved_times(args)
    model = build(args.config, "meta")
    sizes = layer_sizes(model, (args.height // 8, args.width // 8))
    selected = select_layers(model, (args.height, args.width), LeffaLossConfig().theta_resolution)
    full_maps = sum(args.batch * (sizes[n][0] * sizes[n][1]) ** 2 * 4 for n in selected) / 2**20
    print(f"config {args.config} {args.height}x{args.width} batch {args.batch} on {args.device}, "
          f"{torch.get_num_threads()} threads; {len(selected)} Leffa layers")
    print("| variant | fwd+bwd s | peak MiB |")
    print("|---|---|---|")
    for variant in VARIANTS:
        print(f"| {variant} | {seconds[variant]:.2f} | {peaks[variant]:.0f} |")
    print(f"| (all {len(selected)} head-averaged maps materialised at once would need) | | {full_maps:.0f} |")


if __name__ == "__main__":
    main()
