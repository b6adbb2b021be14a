"""The exactness budget on the CPU: this project's cached step against the released per-step work.

Usage: ``python -m bench.bench_exactness --base sd15-inpainting --height 512 --width 384 --repeats 3``

Both run on the same random weights (the released re-creation, :mod:`bench.released`, shares the model's
tensors). One classifier-free-guidance step of model work each, interleaved (the order alternates every
repeat, so load on the machine hits both alike):

- ``released``: the full reference UNet at batch 2 (``[zeros, reference]``), then the generative UNet at
  batch 2 whose self-attention runs over the concatenated ``2·h·w`` tokens (queries included);
- ``ours``: this project's step with the unconditional features cached (as from the second call on): a
  batch-1 reference pass up to its last used layer, then the generative UNet at batch 2 with queries from
  the target tokens only;
- ``ours-bf16`` (``--bf16``): ``ours`` under CPU bf16 autocast (the ``autocast="bf16"`` speed option),
  with its difference from fp32;
- ``ours-channels-last`` (``--channels-last``): ``ours`` on a copy of the model with the
  ``channels_last`` speed option, with its difference from the default layout.

Also prints the exactness of the re-creation (its noise prediction against ours) and the floating-point
work of each part, counted by ``torch.utils.flop_counter`` on the meta device (no compute), which is what
the ratio would be if every part ran equally efficiently.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import add_model_options, set_threads
from bench.released import ReleasedStep
from leffa.core.model import LeffaModel
from leffa.core.speed import SpeedOptions, apply_speed_options

Parts = dict[str, Callable[[], torch.Tensor | dict]]


@dataclass
class Inputs:
    """One CFG step's inputs at latent size ``hw`` (generative inputs doubled, reference latent single)."""

    noisy: torch.Tensor
    mask: torch.Tensor
    masked: torch.Tensor
    densepose: torch.Tensor
    reference: torch.Tensor
    timestep: torch.Tensor = field(default_factory=lambda: torch.tensor(500))

    @classmethod
    def random(cls, hw: tuple[int, int], device: str | torch.device = "cpu", seed: int = 0) -> Inputs:
        gen = torch.Generator().manual_seed(seed)

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, *hw, generator=gen).to(device)

        mask = (torch.rand(2, 1, *hw, generator=gen) > 0.5).float().to(device)
        return cls(draw(2, 4), mask, draw(2, 4), draw(2, 3), draw(1, 4), torch.tensor(500, device=device))

    @property
    def channels(self) -> tuple[torch.Tensor, ...]:
        """The generative UNet's inputs in channel order (noisy latents, mask, masked latents, DensePose)."""
        return self.noisy, self.mask, self.masked, self.densepose

    @property
    def generative(self) -> tuple[torch.Tensor, ...]:
        """The positional inputs of :meth:`LeffaModel.predict_noise` before the features."""
        return *self.channels, self.timestep


def ours_parts(model: LeffaModel, inputs: Inputs) -> Parts:
    """This project's step, split in its reference and generative passes (uncond. features cached)."""
    with torch.no_grad():
        uncond = model.reference_features(torch.zeros_like(inputs.reference), inputs.timestep)
    state: dict[str, dict] = {}

    def reference() -> dict:
        cond = model.reference_features(inputs.reference, inputs.timestep)
        state["features"] = {name: torch.cat([uncond[name], cond[name]]) for name in cond}
        return state["features"]

    def generative() -> torch.Tensor:
        return model.predict_noise(*inputs.generative, state["features"])

    return {"reference": reference, "generative": generative}


def released_parts(released: ReleasedStep, inputs: Inputs) -> Parts:
    return {
        "reference": lambda: released.reference_pass(inputs.reference, inputs.timestep),
        "generative": lambda: released.generative_pass(inputs.channels, inputs.timestep),
    }


def bf16_parts(parts: Parts) -> Parts:
    def under_autocast(fn):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()

        return run

    return {name: under_autocast(fn) for name, fn in parts.items()}


def run_step(parts: Parts) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds per part and the noise prediction of one step."""
    seconds, out = {}, None
    with torch.no_grad():
        for name, fn in parts.items():
            start = time.perf_counter()
            out = fn()
            seconds[name] = time.perf_counter() - start
    return seconds, out


def count_gflops(base: str, hw: tuple[int, int]) -> dict[str, dict[str, float]]:
    """Floating-point work (GFLOP) of each part, counted on the meta device."""
    model = LeffaModel.from_base(base, device="meta").eval()
    inputs = Inputs(*(torch.empty(*shape, *hw, device="meta") for shape in ((2, 4), (2, 1), (2, 4), (2, 3), (1, 4))),
                    timestep=torch.tensor(500, device="meta"))
    result = {}
    for variant, parts in (("released", released_parts(ReleasedStep(model), inputs)), ("ours", ours_parts(model, inputs))):
        result[variant] = {}
        for name, fn in parts.items():
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                fn()
            result[variant][name] = counter.get_total_flops() / 1e9
    return result


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--bf16", action="store_true", help="also time ours under CPU bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="also time ours with channels-last weights")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = LeffaModel.from_base(args.base).eval()
    released = ReleasedStep(model)
    print(f"built {args.base} with random weights in {time.perf_counter() - start:.1f} s", flush=True)
    factor = model.vae_scale_factor
    hw = (args.height // factor, args.width // factor)
    inputs = Inputs.random(hw)
    variants = {"released": released_parts(released, inputs), "ours": ours_parts(model, inputs)}
    if args.bf16:
        variants["ours-bf16"] = bf16_parts(variants["ours"])
    if args.channels_last:
        twin = apply_speed_options(copy.deepcopy(model), SpeedOptions(channels_last=True))
        variants["ours-channels-last"] = ours_parts(twin, inputs)

    outputs = {}
    for name, parts in variants.items():  # warm-up; also the outputs compared below
        seconds, outputs[name] = run_step(parts)
        print(f"warm-up {name}: {sum(seconds.values()):.2f} s", flush=True)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            seconds, _ = run_step(variants[name])
            times[name].append(seconds)
            print(f"repeat {repeat + 1} {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()), flush=True)

    totals = {name: [sum(run.values()) for run in runs] for name, runs in times.items()}
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"config: {args.base} {args.height}x{args.width} fp32, batch 2 (CFG), {args.repeats} interleaved repeats\n")
    print("| variant | reference pass s | generative pass s | step s (median) | ratio to released (median, range) |")
    print("|---|---|---|---|---|")
    for name, runs in times.items():
        ratios = [ours / theirs for ours, theirs in zip(totals[name], totals["released"])]
        parts = [statistics.median(run[part] for run in runs) for part in ("reference", "generative")]
        print(f"| {name} | {parts[0]:.2f} | {parts[1]:.2f} | {statistics.median(totals[name]):.2f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |")
    print(f"\nexactness: ours vs released noise prediction, relative L2 {_relative(outputs['ours'], outputs['released']):.2e}, "
          f"max abs {(outputs['ours'] - outputs['released']).abs().max().item():.2e}")
    for name in ("ours-bf16", "ours-channels-last"):
        if name in outputs:
            print(f"{name} vs ours: relative L2 {_relative(outputs[name], outputs['ours']):.2e}, "
                  f"max abs {(outputs[name].float() - outputs['ours']).abs().max().item():.2e}")
    flops = count_gflops(args.base, hw)
    print("\n| variant | reference GFLOP | generative GFLOP | step GFLOP | ratio |")
    print("|---|---|---|---|---|")
    for name, parts in flops.items():
        total = sum(parts.values())
        print(f"| {name} | {parts['reference']:.4g} | {parts['generative']:.4g} | {total:.4g} | "
              f"{total / sum(flops['released'].values()):.3f} |")


if __name__ == "__main__":
    main()
