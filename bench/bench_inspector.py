"""Does the inspector mark where the model really looks? Scored on generated runs of the demo models.

Each check-batch sample of the two shipped demo models (``assets/demo-model/<task>/check_batch.npz``, held
out from training, with the true correspondence of every pixel) is written to PNG files and generated the
way a user does it (``AppCallbacks``, as ``python -m leffa trace`` runs: 30 steps, guidance 2.5, attention
recorded). Every pixel inside the garment (try-on) or the body (pose transfer), on a ``--stride`` grid, is
then clicked, and what the inspector would mark is compared with the true location in the reference:
a hit is within ``--radius`` pixels (8 = one token of the finest 16x12 grid).

Marks compared: the flow at the clicked pixel (the attention's mean position, ``Trace.flow_at``) in the
default view (what the page rings and ``trace.json`` reports as ``peaks``) and in other views; and the
maximum of the averaged heatmap (the ring before this benchmark). Also how much attention the top and bottom
key rows draw (the sinks of ``leffa.inspect.spread``).

    python -m bench.bench_inspector --seeds 0 1 2 --json bench/inspector_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from leffa.app.callbacks import AppCallbacks, TryOnInputs
from leffa.assets import DEMO_MODEL_DIR
from leffa.app.inspector import layer_labels
from leffa.app.runtime import tiny_runtime
from leffa.app.service import Generation
from leffa.core.settings import SamplingSettings
from leffa.inspect.spread import sink_mask
from leffa.inspect.trace import Trace
from train.synthetic.pose_examples import signed_to_uint8

TASKS = ("virtual_tryon", "pose_transfer")
#: A reference place is flat when its 5x5 neighbourhood varies by less than this (std, 8-bit levels).
FLAT_STD = 6.0
DEFAULT_MARK = "flow · default view (trained layers and timesteps): the ring, peaks"
#: What a user runs: the CLI's and the page's defaults, attention recorded.
STEPS, GUIDANCE = 30, 2.5


def write_inputs(task: str, folder: Path) -> tuple[list[dict[str, Path]], np.ndarray, np.ndarray]:
    """The task's check batch as PNG files per sample, the true flow in reference pixels (N, H, W, 2) and
    the pixels to click (N, H, W): garment pixels inside the mask, or the person for pose transfer."""
    with np.load(DEMO_MODEL_DIR / task / "check_batch.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    pictures = {name: signed_to_uint8(arrays[name], name) for name in ("person", "reference", "densepose")}
    masks = arrays["mask"][:, 0] > 0.5
    samples = []
    for index in range(len(masks)):
        paths = {name: folder / f"{task}_{index}_{name}.png" for name in (*pictures, "mask")}
        for name, images in pictures.items():
            Image.fromarray(images[index]).save(paths[name])
        Image.fromarray(masks[index].astype(np.uint8) * 255).save(paths["mask"])
        samples.append(paths)
    height, width = masks.shape[1:]
    truth = (arrays["true_flow"] + 1) / 2 * np.array([width - 1, height - 1])
    return samples, truth, arrays["flow_valid"] & masks


def generate(actions: AppCallbacks, task: str, paths: dict[str, Path], seed: int) -> Generation:
    """One recorded run as the app and the CLI make it (pose transfer: person = the reference appearance)."""
    settings = SamplingSettings(num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=seed, record_attention=True)
    if task == "pose_transfer":
        return actions.pose_transfer(
            paths["reference"], paths["person"], densepose=paths["densepose"], resolution="full", settings=settings
        )
    inputs = TryOnInputs(
        paths["person"], paths["reference"], mask=paths["mask"], densepose=paths["densepose"], resolution="full"
    )
    return actions.try_on(inputs, settings)


def _flow_pixels(trace: Trace, layer, timestep) -> np.ndarray:
    """The view's flow at every pixel, in reference pixels (H, W, 2): ``flow_at`` at whole pixels."""
    height, width = trace.image_size
    return (trace.flow(layer, timestep).double().numpy() + 1) / 2 * np.array([width - 1, height - 1])


def _argmax(density: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(density)), density.shape)
    return x, y


def score_run(trace: Trace, truth: np.ndarray, clicks: np.ndarray, stride: int) -> dict[str, np.ndarray]:
    """Distance in pixels from each mark to the true location, per way of marking, for the clicks on a
    ``stride`` grid (argmax marks on every second of them: they cost a heatmap each)."""
    ys, xs = np.nonzero(clicks)
    keep = (ys % stride == 0) & (xs % stride == 0)
    ys, xs = ys[keep], xs[keep]
    targets = truth[ys, xs]
    default = trace.default_view
    labels = layer_labels(trace.layers, trace.token_sizes)
    errors: dict[str, np.ndarray] = {}

    def distances(marks: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        return np.hypot(*(np.asarray(marks, np.float64) - targets[rows]).T)

    errors[DEFAULT_MARK] = distances(
        [trace.flow_at((float(x), float(y)), *default) for x, y in zip(xs, ys)]
    )
    errors["flow · all layers, all timesteps"] = distances(_flow_pixels(trace, None, None)[ys, xs])
    for name in trace.layers:
        errors[f"flow · layer {labels[name]}"] = distances(_flow_pixels(trace, name, default.timesteps)[ys, xs])
    for t in trace.timesteps:
        errors[f"flow · t = {t}"] = distances(_flow_pixels(trace, default.layers, t)[ys, xs])
    half = np.arange(0, len(ys), 2)
    views: dict[str, Callable[[float, float], np.ndarray]] = {
        "argmax · all layers, all timesteps (the ring before)": lambda x, y: trace.attention((x, y)),
        "argmax · default view": lambda x, y: trace.attention((x, y), *default),
    }
    for label, density in views.items():
        errors[label] = distances([_argmax(density(float(xs[i]), float(ys[i]))) for i in half], half)
    return errors


def flat_places(reference: np.ndarray) -> np.ndarray:
    """Where the reference (uint8 H × W × 3) is flat: every channel's 5x5 standard deviation below
    :data:`FLAT_STD` (plain cloth or skin, where nothing but the position tells places apart)."""
    values = reference.astype(np.float64)
    mean = ndimage.uniform_filter(values, size=(5, 5, 1))
    spread = np.sqrt(np.maximum(ndimage.uniform_filter(values**2, size=(5, 5, 1)) - mean**2, 0))
    return spread.max(axis=-1) < FLAT_STD


def by_place(errors: np.ndarray, reference: np.ndarray, truth: np.ndarray, clicks: np.ndarray, stride: int) -> dict[str, np.ndarray]:
    """The default mark's errors split by what the true location shows: flat or textured reference."""
    ys, xs = np.nonzero(clicks)
    keep = (ys % stride == 0) & (xs % stride == 0)
    target = np.round(truth[ys[keep], xs[keep]]).astype(int)
    flat = flat_places(reference)[target[:, 1], target[:, 0]]
    return {"flat reference": errors[flat], "textured reference": errors[~flat]}


def border_attention(trace: Trace, clicks: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per layer (default timesteps), over the clicked region's queries: the attention share on the top and
    bottom key rows divided by those rows' share of the keys (1 = no preference), and the correlation of the
    query's row with the bottom row's part of that share (high: the split encodes the pixel's height). Also
    the share of the reference the default view's sinks cover (``sink area``, no correlation)."""
    shares: dict[str, tuple[float, float]] = {}
    labels = layer_labels(trace.layers, trace.token_sizes)
    height, width = trace.image_size
    for name in trace.layers:
        h, w = trace.map_sizes[name]
        rows = np.round(np.arange(h) * (height - 1) / (h - 1)).astype(int)
        columns = np.round(np.arange(w) * (width - 1) / (w - 1)).astype(int)
        inside = clicks[rows][:, columns].ravel()
        query_rows = np.repeat(np.arange(h), w)[inside]
        ratios, correlations = [], []
        for t in trace.default_view.timesteps:
            maps = trace.maps[(t, name)].double().numpy().reshape(-1, h, w)[inside]
            top, bottom = maps[:, 0].sum(-1), maps[:, -1].sum(-1)
            ratios.append((top + bottom).mean() / (2 / h))
            correlations.append(np.corrcoef(query_rows, bottom / (top + bottom))[0, 1])
        shares[labels[name]] = (float(np.mean(ratios)), float(np.mean(correlations)))
    shares["sink area"] = (float(sink_mask(trace.everywhere(*trace.default_view)).mean()), float("nan"))
    return shares


def summarise(errors: Sequence[np.ndarray], radius: float) -> dict[str, float]:
    values = np.concatenate(errors)
    return {
        "clicks": int(values.size), "hits": float(np.mean(values <= radius)), "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
    }


def run(seeds: Sequence[int], stride: int, radius: float) -> dict:
    """Scores per task and way of marking, and the border-attention shares, over all samples and seeds."""
    torch.set_num_threads(1)
    actions = AppCallbacks(tiny_runtime(device="cpu", dtype="fp32").store)
    results: dict = {"seeds": list(seeds), "stride": stride, "radius": radius, "steps": STEPS, "tasks": {}}
    with tempfile.TemporaryDirectory() as folder:
        for task in TASKS:
            samples, truth, clicks = write_inputs(task, Path(folder))
            errors, borders, per_seed, places = (defaultdict(list) for _ in range(4))
            for seed in seeds:
                for index, paths in enumerate(samples):
                    recorded = generate(actions, task, paths, seed).trace
                    for label, values in score_run(recorded, truth[index], clicks[index], stride).items():
                        errors[label].append(values)
                    default = errors[DEFAULT_MARK][-1]
                    per_seed[seed].append(default)
                    for label, values in by_place(default, recorded.reference, truth[index], clicks[index], stride).items():
                        places[label].append(values)
                    for label, value in border_attention(recorded, clicks[index]).items():
                        borders[label].append(value)
                print(f"{task}: seed {seed} done", file=sys.stderr, flush=True)
            results["tasks"][task] = {
                "marks": {label: summarise(values, radius) for label, values in errors.items()},
                "default view per seed": {str(seed): summarise(values, radius) for seed, values in per_seed.items()},
                "default view by place": {label: summarise(values, radius) for label, values in places.items()},
                "edge-row attention / uniform, height correlation": {
                    label: [float(np.mean(column)) for column in zip(*values)] for label, values in borders.items()
                },
            }
    return results


def markdown(results: dict) -> str:
    """The tables of :func:`run`'s results."""
    lines = [
        f"Seeds {results['seeds']}, {results['steps']} steps, clicks on a {results['stride']}-px grid inside the "
        f"garment / body; hit = within {results['radius']:g} px.",
        "",
        "| what is marked | try-on hits / median / p90 | pose hits / median / p90 |",
        "|---|---|---|",
    ]
    tasks = [results["tasks"][task] for task in TASKS]
    for label in tasks[0]["marks"]:
        cells = [
            f"{100 * s['hits']:.1f} % / {s['median']:.2f} / {s['p90']:.2f} px"
            for s in (task["marks"][label] for task in tasks)
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += ["", "| default view, per seed | try-on | pose |", "|---|---|---|"]
    for seed in results["seeds"]:
        cells = [
            f"{100 * s['hits']:.1f} % / {s['median']:.2f} px"
            for s in (task["default view per seed"][str(seed)] for task in tasks)
        ]
        lines.append(f"| seed {seed} | {' | '.join(cells)} |")
    lines += ["", "| default view, by what the true place shows | try-on | pose |", "|---|---|---|"]
    for label in tasks[0]["default view by place"]:
        cells = [
            f"{100 * s['hits']:.1f} % / {s['median']:.2f} px of {s['clicks']} clicks"
            for s in (task["default view by place"][label] for task in tasks)
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        "| edge-row attention: top + bottom key rows, × their share of keys (correlation of the bottom part "
        "with the clicked row) | try-on | pose |",
        "|---|---|---|",
    ]
    key = "edge-row attention / uniform, height correlation"
    for label in tasks[0][key]:
        pairs = [task[key][label] for task in tasks]
        if label == "sink area":
            cells = [f"{area:.2f} of the reference" for area, _ in pairs]
        else:
            cells = [f"{ratio:.2f}× ({correlation:.2f})" for ratio, correlation in pairs]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--stride", type=int, default=2, help="click every STRIDE-th pixel in x and y")
    parser.add_argument("--radius", type=float, default=8.0, help="a hit is within this many pixels")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = run(args.seeds, args.stride, args.radius)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
