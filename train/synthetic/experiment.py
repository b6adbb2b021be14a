"""The synthetic benchmark of the Leffa loss: train the stages, evaluate them, draw the figures.

The stages are ordinary trainer configs (``train/config.py``, ``data.type: synthetic``) trained by the one
trainer of ``train/train.py``; seeds fix weights, data order, noise and timesteps. ``model.vae_path`` points
at the ``vae.safetensors`` written by ``train/synthetic/vae.py`` (the trainer checks its ``vae.json`` against
``model.vae_config``), and fine-tuning stages (``model.init: checkpoint``) start from a run's exported
``model.safetensors``.

Commands (see ``docs/synthetic-benchmark.md`` for the full sequence and the measured results)::

    python -m train.synthetic.experiment train train/configs/synthetic/base.yaml
    python -m train.synthetic.experiment evaluate runs/synthetic/finetune runs/synthetic/leffa
    python -m train.synthetic.experiment evaluate runs/synthetic/untrained --untrained-from runs/synthetic/base
    python -m train.synthetic.experiment report runs/synthetic/untrained runs/synthetic/finetune ...
    python -m train.synthetic.experiment study
    python -m train.synthetic.experiment figures runs/synthetic/finetune runs/synthetic/leffa-w1-tau1
    python -m train.synthetic.experiment all        # every stage of the first benchmark, in order

The demo models are shipped by ``train/synthetic/ship.py``; per-checkpoint flow probes are
``train/synthetic/probe.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leffa.core.serialization import read_config_files
from leffa.core.flow import upsample_flow, warp
from leffa.core.model import LeffaModel
from leffa.core.recording import layer_sizes
from leffa.inspect.visualize import attention_heatmap, color_wheel_legend, flow_to_color, side_by_side
from train.config import TrainConfig, load_config
from train.synthetic.data import render_split, to_batch
from train.synthetic.eval import (
    STUDY_INITS,
    EvalSettings,
    free_attention_study,
    evaluate_model,
    reference_flow_scores,
    sample,
    teacher_forced,
)
from train.synthetic.vae import VaeTrainConfig, train_vae
from train.trackers import JSONL_FILE, read_jsonl_log
from train.train import Trainer

CONFIG_DIR = Path("train/configs/synthetic")
RUN_DIR = Path("runs/synthetic")
CACHE_DIR = RUN_DIR / "cache"
#: Samples of the test split every model is scored on.
TEST_COUNT = 64
#: Training stages of ``all``, in order; each name is ``train/configs/synthetic-<name>.yaml``.
STAGES = (
    "base", "finetune", "leffa", "leffa-w1e-1", "leffa-w1", "leffa-w1-tau1", "base-long", "long-finetune", "long-leffa"
)
#: The no-Leffa and Leffa fine-tunes the figures compare.
BASELINE_STAGE = "finetune"
LEFFA_STAGE = "leffa-w1-tau1"
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- train


TRAIN_INFO_FILE = "train_info.json"


def load_run(run: str | Path) -> LeffaModel:
    """A run folder (the trainer's ``model.safetensors`` and model configs), loaded strictly, fp32 on the CPU."""
    try:
        model = LeffaModel.from_pretrained(run, device="cpu", dtype=torch.float32)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; train it first: python -m train.synthetic.experiment train") from None
    return model.eval()


def read_train_info(run: str | Path) -> dict:
    """The run's ``train_info.json`` (written by :func:`train_stage`), or ``{}`` when it has none."""
    info = Path(run) / TRAIN_INFO_FILE
    return json.loads(info.read_text()) if info.is_file() else {}


def train_stage(config: TrainConfig, log: Log) -> dict:
    """Train one stage with the trainer (``train/train.py``) and write ``train_info.json`` beside the run.

    The final losses are the means over the steps logged in the last 200 (``logging.log_with: jsonl``).
    """
    if config.data.type != "synthetic":
        raise ValueError(f"{config.output_dir}: data.type must be synthetic for a synthetic benchmark stage")
    start = time.time()
    Trainer(config).fit()
    out = Path(config.output_dir)
    log_file = out / "logs" / config.logging.project / JSONL_FILE
    records = read_jsonl_log(log_file) if log_file.is_file() else []
    tail = [r for r in records if r["step"] > config.train.max_steps - 200]

    def final(key: str) -> float | None:
        values = [r[key] for r in tail if key in r]
        return float(np.mean(values)) if values else None

    info = {
        "wall_seconds": time.time() - start,
        "steps": config.train.max_steps,
        "final_diffusion_loss": final("loss/diffusion"),
        "final_leffa_loss": final("loss/leffa"),
        "threads": torch.get_num_threads(),
    }
    (out / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"trained {out.name} in {info['wall_seconds'] / 60:.1f} min")
    return info


# ------------------------------------------------------------------------------------------- evaluate


def _test_split() -> dict[str, np.ndarray]:
    return render_split("test", TEST_COUNT, (128, 96), 0, cache_dir=CACHE_DIR)


def untrained_model(reference_run: str | Path, seed: int = 0) -> LeffaModel:
    """Random UNets (seeded as a base stage starts) with the trained VAE of ``reference_run``."""
    trained = load_run(reference_run)
    configs = read_config_files(reference_run)
    torch.manual_seed(seed)
    model = LeffaModel.from_config(configs["unet"], configs["vae"], configs["scheduler"], base="synthetic")
    model.vae.load_state_dict(trained.vae.state_dict())
    return model.eval()


def evaluate_run(run: str | Path, log: Log, *, untrained_from: str | Path | None = None) -> dict:
    """Score one run on the test split and write ``<run>/eval.json``.

    With ``untrained_from``, ``run`` is only the output folder and the scored model is the untrained one
    built from that run's configs and VAE (see :func:`untrained_model`).
    """
    start = time.time()
    model = untrained_model(untrained_from) if untrained_from is not None else load_run(run)
    scores = evaluate_model(model, _test_split())
    result = {"metrics": scores, "eval_seconds": time.time() - start, "threads": torch.get_num_threads()}
    Path(run).mkdir(parents=True, exist_ok=True)
    (Path(run) / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"evaluated {Path(run).name} in {result['eval_seconds']:.0f}s: tf/t100 epe {scores['tf/t100/epe/mean']:.2f}")
    return result


#: Columns of the report's main table: (heading, metric key); EPE in pixels of the 128x96 image.
TABLE_COLUMNS = (
    ("EPE t100", "tf/t100/epe/mean"),
    ("EPE t300", "tf/t300/epe/mean"),
    ("EPE 16x12", "tf/t100/epe/res/16x12"),
    ("EPE 8x6", "tf/t100/epe/res/8x6"),
    ("sampler EPE t101", "sample/plain/t101/epe/mean"),
    ("warp L1", "tf/t100/warp_l1/mean"),
    ("garment L1", "sample/plain/garment_l1"),
    ("garment PSNR", "sample/plain/garment_psnr"),
    ("garment SSIM", "sample/plain/garment_ssim"),
    ("mask L1", "sample/plain/mask_l1"),
    ("accel garment L1", "sample/accel/garment_l1"),
    ("accel garment SSIM", "sample/accel/garment_ssim"),
)


def _markdown(results: dict) -> str:
    """The main results table (models, then the flow baselines) as Markdown."""
    head = ["model", "train steps", "train min", *[name for name, _ in TABLE_COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in results["models"].items():
        train = entry.get("train", {})
        cells = [name, str(train.get("steps", 0)), f"{train.get('wall_seconds', 0) / 60:.1f}"]
        cells += [f"{entry['metrics'][key]:.3f}" if key in entry["metrics"] else "" for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    for name in ("identity", "uniform"):
        epe, warp_error = results["flow_baselines"][f"{name}/epe"], results["flow_baselines"][f"{name}/warp_l1"]
        cells = [f"{name} flow", "", ""]
        cells += [f"{epe:.3f}" if "epe" in key else f"{warp_error:.3f}" if "warp" in key else "" for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(runs: Sequence[str | Path], out: Path) -> dict:
    """Collect each run's ``eval.json`` and ``train_info.json`` with the flow baselines into
    ``results.json`` and the Markdown table ``results.md``."""
    models = {}
    for run in map(Path, runs):
        if not (run / "eval.json").is_file():
            raise FileNotFoundError(f"{run}/eval.json not found; run: python -m train.synthetic.experiment evaluate {run}")
        entry = json.loads((run / "eval.json").read_text())
        entry["train"] = read_train_info(run)
        models[run.name] = entry
    results = {"settings": vars(EvalSettings()), "flow_baselines": reference_flow_scores(_test_split()), "models": models}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(results))
    return results


def loss_study(out: Path, log: Log) -> dict:
    """The Leffa loss minimised over free attention logits from each start (see ``free_attention_study``)."""
    split = _test_split()
    results = {}
    for init in STUDY_INITS:
        start = time.time()
        results[init] = free_attention_study(split, init)
        log(f"loss study from {init}: {json.dumps(results[init])} ({time.time() - start:.0f}s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


# -------------------------------------------------------------------------------------------- figures


#: Figure panels are enlarged this many times (nearest neighbour) so 128x96 pixels stay readable.
ZOOM = 2


def _uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _zoom(image: np.ndarray) -> np.ndarray:
    return image.repeat(ZOOM, axis=0).repeat(ZOOM, axis=1)


def _flow_picture(flow: torch.Tensor, valid: np.ndarray, max_magnitude: float) -> np.ndarray:
    picture = flow_to_color(flow, max_magnitude=max_magnitude)
    picture[~valid] = 255
    return picture


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded)


def draw_figures(runs: dict[str, str | Path], out: Path, samples: Sequence[int] = (0, 1, 2, 3)) -> list[Path]:
    """Flow colour wheels, attention heatmaps and samples of each run on a few test samples."""
    out.mkdir(parents=True, exist_ok=True)
    split = _test_split()
    batch = to_batch(split, list(samples))
    valid = (batch["flow_valid"][:, 0] * batch["mask"][:, 0]).bool().numpy()
    person, garment = _uint8(batch["image"] / 2 + 0.5), _uint8(batch["reference"] / 2 + 0.5)
    size = tuple(batch["image"].shape[-2:])
    models = {name: load_run(run) for name, run in runs.items()}
    forced = {name: teacher_forced(model, batch, (100,))[100] for name, model in models.items()}
    generated = {name: sample(model, batch, EvalSettings())[0] for name, model in models.items()}
    true_flow = batch["flow"]
    max_magnitude = 0.5 * max(size)
    flow_rows, sample_rows = [], []
    for k in range(len(samples)):
        panels = [
            person[k],
            garment[k],
            _flow_picture(upsample_flow(true_flow[k : k + 1], size)[0], valid[k], max_magnitude),
        ]
        labels = ["target", "garment", "true flow"]
        for name, result in forced.items():
            mean_flow = torch.stack(
                [upsample_flow(f[k : k + 1].float(), size) for f in result["flows"].values()]
            ).mean(0)
            warped = _uint8(warp(batch["reference"][k : k + 1] / 2 + 0.5, mean_flow))[0]
            warped[~valid[k]] = 255
            panels += [_flow_picture(mean_flow[0], valid[k], max_magnitude), warped]
            labels += [f"{name} flow", f"{name} warp"]
        flow_rows.append(side_by_side([_zoom(panel) for panel in panels], labels))
        samples_k = [person[k]] + [_uint8(images[k : k + 1])[0] for images in generated.values()]
        sample_rows.append(side_by_side([_zoom(panel) for panel in samples_k], ["target", *generated]))
    legend = side_by_side([color_wheel_legend(96 * ZOOM)], ["flow colours"])
    paths = [out / "synthetic-flows.png", out / "synthetic-samples.png", out / "synthetic-heatmaps.png"]
    Image.fromarray(_stack_rows(flow_rows + [legend])).save(paths[0])
    Image.fromarray(_stack_rows(sample_rows)).save(paths[1])
    Image.fromarray(_heatmap_figure(models, batch, valid, garment)).save(paths[2])
    return paths


def _heatmap_figure(
    models: dict[str, LeffaModel], batch: dict, valid: np.ndarray, garment: np.ndarray
) -> np.ndarray:
    """For a few garment pixels of the first sample: where each model's finest layers look (t = 100)."""
    height, width = valid.shape[1:]
    ys, xs = np.nonzero(valid[0])
    picks = np.linspace(0, len(ys) - 1, 5).round().astype(int)[1:-1]
    points = [(float(xs[i]) / (width - 1), float(ys[i]) / (height - 1)) for i in picks]
    true = batch["flow"][0]
    rows = []
    for (x, y), i in zip(points, picks, strict=True):
        gx, gy = ((true[ys[i], xs[i]] + 1) / 2 * torch.tensor([width - 1, height - 1])).round().int().tolist()
        panels = [_mark(_uint8(batch["image"][:1] / 2 + 0.5)[0], xs[i], ys[i])]
        for model in models.values():
            row = _attention_row(model, batch, (x, y))
            panels.append(_mark(attention_heatmap(row, _finest_layers(model, (height, width))[0], garment[0]), gx, gy))
        rows.append(side_by_side([_zoom(panel) for panel in panels], ["query", *models]))
    return _stack_rows(rows)


def _finest_layers(model: LeffaModel, image_size: tuple[int, int]) -> tuple[tuple[int, int], list[str]]:
    """The largest token grid among the model's attention layers, and the layers that have it."""
    factor = model.vae_scale_factor
    sizes = layer_sizes(model, (image_size[0] // factor, image_size[1] // factor))
    finest = max(sizes.values(), key=lambda size: size[0] * size[1])
    return finest, [layer for layer, size in sizes.items() if size == finest]


def _attention_row(model: LeffaModel, batch: dict, point: tuple[float, float]) -> torch.Tensor:
    """Mean attention row of the query under ``point`` over the finest-resolution layers, t = 100."""
    single = {key: value[:1] for key, value in batch.items()}
    _, finest = _finest_layers(model, tuple(batch["image"].shape[-2:]))
    rows = teacher_forced(model, single, (100,), rows=[point])[100]["rows"]
    return torch.stack([rows[layer][0, 0] for layer in finest]).mean(0)


def _mark(image: np.ndarray, x: int, y: int) -> np.ndarray:
    """A small white-on-black cross at pixel (x, y)."""
    marked = image.copy()
    height, width = marked.shape[:2]
    for dx in range(-3, 4):
        for colour, offset in (((0, 0, 0), 1), ((255, 255, 255), 0)):
            for px, py in ((x + dx, y + offset), (x + offset, y + dx)):
                if 0 <= px < width and 0 <= py < height:
                    marked[py, px] = colour
    return marked


# --------------------------------------------------------------------------------------------- export


# ----------------------------------------------------------------------------------------------- main


def _log(line: str) -> None:
    print(line, flush=True)


def run_all(log: Log) -> None:
    """Every stage in order, as reported in docs/synthetic-benchmark.md."""
    train_vae(load_config(CONFIG_DIR / "vae.yaml", schema=VaeTrainConfig), log)
    for stage in STAGES:
        train_stage(load_config(CONFIG_DIR / f"{stage}.yaml"), log)
    runs = [RUN_DIR / stage for stage in STAGES]
    evaluate_run(RUN_DIR / "untrained", log, untrained_from=runs[0])
    for run in runs:
        evaluate_run(run, log)
    write_report([RUN_DIR / "untrained", *runs], RUN_DIR / "results.json")
    loss_study(RUN_DIR / "loss_study.json", log)
    draw_figures({BASELINE_STAGE: RUN_DIR / BASELINE_STAGE, LEFFA_STAGE: RUN_DIR / LEFFA_STAGE}, Path("docs/figures"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Synthetic benchmark of the Leffa loss (docs/synthetic-benchmark.md)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared, busy CPU)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one stage from a trainer-schema YAML config")
    train.add_argument("config")
    train.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="replace one config value (YAML)"
    )
    evaluate = commands.add_parser("evaluate", help="score runs on the test split (writes RUN/eval.json)")
    evaluate.add_argument("runs", nargs="+")
    evaluate.add_argument("--untrained-from", help="score the untrained model built from this run's configs instead")
    report = commands.add_parser("report", help="collect evaluated runs into results.json and results.md")
    report.add_argument("runs", nargs="+")
    report.add_argument("--out", default=str(RUN_DIR / "results.json"))
    figures = commands.add_parser("figures", help="draw flow, heatmap and sample figures of runs")
    figures.add_argument("runs", nargs="+")
    figures.add_argument("--out", default="docs/figures")
    study = commands.add_parser("study", help="minimise the Leffa loss over free attention (no model)")
    study.add_argument("--out", default=str(RUN_DIR / "loss_study.json"))
    commands.add_parser("all", help="every stage in order")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "train":
        train_stage(load_config(args.config, args.override), _log)
    elif args.command == "evaluate":
        for run in args.runs:
            evaluate_run(run, _log, untrained_from=args.untrained_from)
    elif args.command == "report":
        write_report(args.runs, Path(args.out))
    elif args.command == "figures":
        draw_figures({Path(run).name: run for run in args.runs}, Path(args.out))
    elif args.command == "study":
        loss_study(Path(args.out), _log)
    else:
        run_all(_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
