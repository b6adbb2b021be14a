"""Ship synthetic runs as the built-in demo models, each with a check batch and the numbers measured on it.

Why: the demo models are what a newcomer without the released weights sees, and their point is the attention
inspector; so each ships with held-out test samples (``check_batch.npz``) and the correspondence and image
numbers measured on them (``check.json``), which ``tests/test_demo_model.py`` recomputes.

Layout of ``assets/demo-model/<task>/`` (task ``virtual_tryon`` or ``pose_transfer``): ``model.safetensors``
(fp16, released key format), ``unet.json``/``vae.json``/``scheduler.json``, ``metadata.json`` (task,
``trained``, the runs and seeds that made it), ``check_batch.npz`` and ``check.json``.

    python -m train.synthetic.ship virtual_tryon runs/synthetic/ship-tryon --compare warm=runs/synthetic/warm-strong
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from leffa.core.configs import BaseConfigs
from leffa.core.flow import upsample_flow
from leffa.core.model import LeffaModel
from leffa.core.serialization import (
    MODEL_FILE,
    read_config_files,
    read_state_dict,
    save_state_dict,
    write_config_files,
)
from train.synthetic.data import render_split, to_batch
from train.synthetic.eval import (
    EvalSettings,
    flow_epe,
    identity_flow,
    masked_l1,
    masked_ssim,
    sample,
    teacher_forced,
    uniform_attention_flow,
)
from train.synthetic.pose import render_pose_split

#: Demo-model task names (the app's) -> the synthetic task that trains them.
TASKS = {"virtual_tryon": "tryon", "pose_transfer": "pose_transfer"}
#: Test samples in a check batch, and what is measured on it.
CHECK_BATCH_COUNT = 8
CHECK_TIMESTEP = 100
CHECK_SAMPLER = EvalSettings(num_inference_steps=20, sampler_trace_timesteps=(), guidance_scale=2.5, seed=0)
BATCH_FILE = "check_batch.npz"
BATCH_KEYS = ("person", "reference", "mask", "densepose", "true_flow", "flow_valid")
#: The EMA weights the trainer exports beside ``model.safetensors`` (``train.ema.enabled``).
EMA_EXPORT = "model-ema.safetensors"


def write_check_batch(task: str, out: str | Path, size: tuple[int, int] = (128, 96)) -> Path:
    """Test samples ``0..CHECK_BATCH_COUNT-1`` of ``task`` (synthetic seed 0; never trained on) as
    ``<out>/check_batch.npz``.

    Arrays: ``person``, ``reference`` (N, 3, H, W) float32 in [-1, 1]; ``mask`` (N, 1, H, W), 1 = generate
    (all ones for pose transfer); ``densepose`` (N, 3, H, W) as the model takes it; ``true_flow``
    (N, H, W, 2) absolute ``grid_sample`` positions (x first, ``align_corners=True``); ``flow_valid``
    (N, H, W) bool.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    render = render_split if TASKS[task] == "tryon" else render_pose_split
    batch = to_batch(render("test", CHECK_BATCH_COUNT, size, 0), np.arange(CHECK_BATCH_COUNT))
    arrays = {
        "person": batch["image"].numpy(),
        "reference": batch["reference"].numpy(),
        "mask": batch["mask"].numpy(),
        "densepose": batch["densepose"].numpy(),
        "true_flow": batch["flow"].numpy(),
        "flow_valid": batch["flow_valid"][:, 0].numpy() > 0.5,
    }
    path = Path(out) / BATCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def read_check_batch(path: str | Path) -> dict[str, Tensor]:
    """A check batch as model inputs: ``image``, ``reference``, ``mask``, ``densepose``, ``flow``,
    ``flow_valid`` (B, 1, H, W float)."""
    with np.load(path) as stored:
        missing = [key for key in BATCH_KEYS if key not in stored.files]
        if missing:
            raise KeyError(f"{path} lacks {missing}; rebuild it with python -m train.synthetic.ship")
        arrays = {key: torch.from_numpy(stored[key]) for key in BATCH_KEYS}
    return {
        "image": arrays["person"],
        "reference": arrays["reference"],
        "mask": arrays["mask"],
        "densepose": arrays["densepose"],
        "flow": arrays["true_flow"],
        "flow_valid": arrays["flow_valid"][:, None].float(),
    }


@torch.no_grad()
def correspondence_numbers(model: LeffaModel, batch: Mapping[str, Tensor]) -> dict[str, float]:
    """Teacher-forced at t = 100, τ = 1, heads averaged: ``epe/layer/<name>``, ``epe/best_layer`` and
    ``epe/layer_mean`` (EPE of the flow averaged over layers), in pixels over ``flow_valid`` inside the mask."""
    model.eval()
    valid = batch["flow_valid"] * batch["mask"]
    flows = teacher_forced(model, batch, (CHECK_TIMESTEP,), temperature=1.0, seed=0)[CHECK_TIMESTEP]["flows"]
    scores = {f"epe/layer/{name}": float(flow_epe(flow, batch["flow"], valid).mean()) for name, flow in flows.items()}
    size = tuple(batch["flow"].shape[1:3])
    mean_flow = torch.stack([upsample_flow(flow.float(), size) for flow in flows.values()]).mean(0)
    scores["epe/layer_mean"] = float(flow_epe(mean_flow, batch["flow"], valid).mean())
    scores["epe/best_layer"] = min(scores[f"epe/layer/{name}"] for name in flows)
    return scores


@torch.no_grad()
def image_numbers(model: LeffaModel, batch: Mapping[str, Tensor], *, ref_acceleration: bool = False) -> dict[str, float]:
    """Sampled (20 steps, guidance 2.5, seed 0): ``garment_l1``/``garment_ssim`` over ``flow_valid`` (the
    garment, or the person for pose transfer) and ``mask_l1`` over the mask; images in [0, 1]."""
    model.eval()
    valid = batch["flow_valid"] * batch["mask"]
    target = (batch["image"].float() / 2 + 0.5).clamp(0, 1)
    images, _ = sample(model, batch, CHECK_SAMPLER, ref_acceleration=ref_acceleration)
    return {
        "garment_l1": float(masked_l1(images, target, valid).mean()),
        "garment_ssim": float(masked_ssim(images, target, valid).mean()),
        "mask_l1": float(masked_l1(images, target, batch["mask"]).mean()),
    }


def check_numbers(model: LeffaModel, batch: Mapping[str, Tensor]) -> dict[str, float]:
    """:func:`correspondence_numbers` and :func:`image_numbers`, plain (``plain/``) and with reference
    acceleration (``accel/``)."""
    scores = correspondence_numbers(model, batch)
    for kind, accel in (("plain", False), ("accel", True)):
        scores.update({f"{kind}/{k}": v for k, v in image_numbers(model, batch, ref_acceleration=accel).items()})
    return scores


def baseline_numbers(batch: Mapping[str, Tensor]) -> dict[str, float]:
    """EPE of the identity flow and of uniform attention on a check batch (what no correspondence scores)."""
    count, height, width = batch["flow"].shape[:3]
    valid = batch["flow_valid"] * batch["mask"]
    grid = (height // 8, width // 8)
    return {
        "identity/epe": float(flow_epe(identity_flow(count, height, width), batch["flow"], valid).mean()),
        "uniform/epe": float(flow_epe(uniform_attention_flow(count, grid, grid), batch["flow"], valid).mean()),
    }


@torch.no_grad()
def check_figure(model: LeffaModel, batch: Mapping[str, Tensor], count: int = 3) -> np.ndarray:
    """Rows of the first ``count`` check samples: reference, target, true flow, the model's layer-mean flow
    (teacher-forced t = 100, τ = 1), the reference warped by it (white where there is no true flow) and a
    20-step sample; uint8, enlarged 2x so 128x96 pixels stay readable."""
    from leffa.core.flow import warp
    from leffa.inspect.visualize import flow_to_color, side_by_side

    model.eval()
    part = {key: value[:count] for key, value in batch.items()}
    size = tuple(part["flow"].shape[1:3])
    flows = teacher_forced(model, part, (CHECK_TIMESTEP,), temperature=1.0, seed=0)[CHECK_TIMESTEP]["flows"]
    mean_flow = torch.stack([upsample_flow(flow.float(), size) for flow in flows.values()]).mean(0)
    images, _ = sample(model, part, CHECK_SAMPLER)
    reference = (part["reference"].float() / 2 + 0.5).clamp(0, 1)
    warped = warp(reference, mean_flow)
    valid = (part["flow_valid"] * part["mask"])[:, 0].bool().numpy()

    def picture(image: Tensor) -> np.ndarray:
        return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    def flow_picture(flow: Tensor, k: int) -> np.ndarray:
        colours = flow_to_color(flow, max_magnitude=0.5 * max(size))
        colours[~valid[k]] = 255
        return colours

    rows = []
    for k in range(count):
        warp_k = picture(warped[k])
        warp_k[~valid[k]] = 255
        panels = [
            picture(reference[k]), picture(part["image"][k].float() / 2 + 0.5), flow_picture(part["flow"][k], k),
            flow_picture(mean_flow[k], k), warp_k, picture(images[k]),
        ]
        labels = ["reference", "target", "true flow", "model flow", "warped", "sample"]
        rows.append(side_by_side([panel.repeat(2, 0).repeat(2, 1) for panel in panels], labels))
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded)


def export_demo_model(
    run: str | Path,
    task: str,
    out: str | Path,
    *,
    recipe: list[dict],
    compared: Mapping[str, str | Path] = {},
    ema: bool = False,
) -> dict:
    """Write ``run`` (with ``ema``: its ``model-ema.safetensors``, the trainer's EMA export) as the ``task``
    demo model into ``out`` and measure it.

    Files: fp16 weights and configs, ``metadata.json`` (``trained: true`` and ``recipe``: the stages with
    their configs, overrides and seeds), the check batch and ``check.json`` with this model's numbers, the
    untrained model's (random UNets, same VAE), the flow baselines and each run in ``compared``.
    """
    from train.synthetic.experiment import load_run, untrained_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_run(run)
    if ema:
        model.load_state_dict(read_state_dict(Path(run) / EMA_EXPORT))
    save_state_dict(model.state_dict(), out / MODEL_FILE, torch.float16)
    write_config_files(BaseConfigs(**read_config_files(run), name="demo"), out)
    metadata = {"task": task, "trained": True, "image_size": [128, 96], "recipe": recipe}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    batch = read_check_batch(write_check_batch(task, out))
    check = {
        "samples": f"test split of the synthetic {TASKS[task]} task, seed 0, indices 0..{CHECK_BATCH_COUNT - 1}",
        "teacher_forced": {"timestep": CHECK_TIMESTEP, "temperature": 1.0, "heads": "mean", "noise_seed": 0},
        "sampler": {"steps": CHECK_SAMPLER.num_inference_steps, "guidance": CHECK_SAMPLER.guidance_scale, "seed": 0},
        "demo": check_numbers(load_run(out), batch),
        "untrained": check_numbers(untrained_model(run), batch),
        "baselines": baseline_numbers(batch),
        "compared": {name: check_numbers(load_run(path), batch) for name, path in compared.items()},
    }
    (out / "check.json").write_text(json.dumps(check, indent=2) + "\n")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ship a synthetic run as a demo model (train/synthetic/ship.py)")
    parser.add_argument("task", choices=tuple(TASKS))
    parser.add_argument("run")
    parser.add_argument("--out", help="default: assets/demo-model/<task>")
    parser.add_argument("--recipe", help="JSON file: the list of stages that made the run (see metadata.json)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="NAME=RUN", help="runs measured beside it")
    parser.add_argument("--figure", help="also write the check figure (check_figure) to this PNG")
    parser.add_argument("--ema", action="store_true", help=f"ship the run's EMA weights ({EMA_EXPORT})")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bad = [item for item in args.compare if "=" not in item]
    if bad:
        parser.error(f"--compare takes NAME=RUN pairs, got {bad}")
    recipe = json.loads(Path(args.recipe).read_text()) if args.recipe else []
    out = args.out or f"assets/demo-model/{args.task}"
    compared = dict(item.split("=", 1) for item in args.compare)
    check = export_demo_model(args.run, args.task, out, recipe=recipe, compared=compared, ema=args.ema)
    if args.figure:
        from PIL import Image

        from train.synthetic.experiment import load_run

        figure = check_figure(load_run(out), read_check_batch(Path(out) / BATCH_FILE))
        Image.fromarray(figure).save(args.figure)
    demo = check["demo"]
    print(
        f"{out}: best layer EPE {demo['epe/best_layer']:.2f} px, layer-mean {demo['epe/layer_mean']:.2f} px, "
        f"garment L1 {demo['plain/garment_l1']:.3f}, SSIM {demo['plain/garment_ssim']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
