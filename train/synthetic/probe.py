"""Correspondence probes of a synthetic run: per-layer and per-head flow error and attention entropy.

Why: the Leffa-effect experiment (``docs/synthetic-benchmark.md``) follows how a fine-tune keeps or loses
the correspondence a warm start gave it; a layer's head-averaged flow (what the Leffa loss sees) can sit at
the garment's centre while single heads point at the right place, so both are measured.

    python -m train.synthetic.probe runs/synthetic/grid-strong-l1e-1-s0     # every checkpoint of a run

writes ``<run>/probe_log.jsonl``, one line per checkpoint (the trainer keeps them all with
``checkpoint.keep: null``; the stage configs checkpoint every 50 steps). ``--check`` also samples the run's
final model on the task's shipped check batch (``check_numbers.json``: garment L1/SSIM with and without
reference acceleration), and ``--table FILE`` writes the benchmark's Markdown table of the runs.

    python -m train.synthetic.probe runs/synthetic/grid-strong-* --check --table runs/synthetic/grid.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from leffa.core.flow import attention_entropy, reference_grid, upsample_flow
from leffa.core.model import LeffaModel
from leffa.core.recording import layer_sizes
from train.synthetic.data import render_split, to_batch
from train.synthetic.eval import TeacherForcing, flow_epe
from train.synthetic.pose import render_pose_split

#: What the probe measures: teacher-forced timesteps (τ = 1) on the first test samples of the task.
PROBE_TIMESTEPS = (100, 300)
PROBE_COUNT = 32
TASKS = ("tryon", "pose_transfer")
#: Table columns of the sampled check-batch numbers -> their ``ship.check_numbers`` keys.
SAMPLE_COLUMNS = {
    "L1": "plain/garment_l1",
    "SSIM": "plain/garment_ssim",
    "accel L1": "accel/garment_l1",
    "accel SSIM": "accel/garment_ssim",
}
PROBE_FILE = "probe_log.jsonl"
CHECK_FILE = "check_numbers.json"


def probe_split(task: str, count: int = PROBE_COUNT, cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Test samples ``0..count-1`` of ``task`` (synthetic seed 0, 128x96) with their true flows."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    render = render_split if task == "tryon" else render_pose_split
    return render("test", count, (128, 96), 0, cache_dir=cache_dir)


class HeadRecorder:
    """Attention observer keeping every head's map over the reference keys (small synthetic layers only)."""

    def __init__(self, model: LeffaModel) -> None:
        self.model = model
        self.maps: dict[str, Tensor] = {}
        self.sizes: dict[str, tuple[int, int]] = {}

    def wants(self, layer: str, timestep: int | None) -> bool:
        return True

    def observe(
        self, layer: str, query: Tensor, key: Tensor, scale: float, *, timestep: int | None, latent_size: tuple[int, int]
    ) -> None:
        self.maps[layer] = torch.softmax(query.float() @ key.float().transpose(-1, -2) * scale, dim=-1)
        self.sizes[layer] = layer_sizes(self.model, latent_size)[layer]


@torch.no_grad()
def flow_probe(
    model: LeffaModel, split: Mapping[str, np.ndarray], timesteps: Sequence[int] = PROBE_TIMESTEPS, seed: int = 0
) -> dict[str, float]:
    """Teacher-forced attention quality at τ = 1, averaged over the split.

    Keys per timestep ``t``: ``t{t}/epe/head/<layer>/<head>``, ``t{t}/epe/layer/<layer>`` (heads averaged),
    ``t{t}/epe/layer_mean`` (the flow averaged over layers), ``t{t}/epe/best_layer`` and
    ``t{t}/entropy/<layer>`` (nats, of the head-averaged attention rows). EPE in pixels over the target
    pixels with a true flow inside the mask; the same noise for every model.
    """
    was_training = model.training
    model.eval()
    batch = to_batch(split, np.arange(len(split["seed"])))
    forced = TeacherForcing.of(model, batch, seed)
    true_flow, valid = batch["flow"], batch["flow_valid"] * batch["mask"]
    scores: dict[str, float] = {}
    for t in timesteps:
        recorder = HeadRecorder(model)
        forced.predict(model, t, recorder)
        layer_flows, per_layer = [], []
        for layer, maps in recorder.maps.items():
            h, w = recorder.sizes[layer]
            heads = maps @ reference_grid(h, w)  # (B, heads, queries, 2)
            for head in range(heads.shape[1]):
                flow = heads[:, head].reshape(-1, h, w, 2)
                scores[f"t{t}/epe/head/{layer}/{head}"] = float(flow_epe(flow, true_flow, valid).mean())
            mean_flow = heads.mean(1).reshape(-1, h, w, 2)
            layer_flows.append(upsample_flow(mean_flow, tuple(true_flow.shape[1:3])))
            per_layer.append(float(flow_epe(mean_flow, true_flow, valid).mean()))
            scores[f"t{t}/epe/layer/{layer}"] = per_layer[-1]
            scores[f"t{t}/entropy/{layer}"] = float(attention_entropy(maps.mean(1)).mean())
        scores[f"t{t}/epe/layer_mean"] = float(flow_epe(torch.stack(layer_flows).mean(0), true_flow, valid).mean())
        scores[f"t{t}/epe/best_layer"] = min(per_layer)
    model.train(was_training)
    return scores


def probe_run(run: str | Path, task: str, cache_dir: str | Path | None = None) -> list[dict]:
    """Probe every checkpoint of a trainer run folder; writes ``probe_log.jsonl``.

    A model folder without checkpoints (an exported or shipped model) gets one line for its
    ``model.safetensors``, at the step its ``train_info.json`` records (0 when it has none).
    """
    from train.checkpoints import checkpoint_step, list_checkpoints, read_checkpoint_weights
    from train.synthetic.experiment import load_run, read_train_info

    run = Path(run)
    model = load_run(run)
    split = probe_split(task, cache_dir=cache_dir)
    checkpoints = list_checkpoints(run)
    lines = []
    for checkpoint in checkpoints:
        model.load_state_dict(read_checkpoint_weights(checkpoint))
        lines.append({"step": checkpoint_step(checkpoint), **flow_probe(model, split)})
    if not checkpoints:
        lines.append({"step": int(read_train_info(run).get("steps", 0)), **flow_probe(model, split)})
    (run / PROBE_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def check_run(run: str | Path, task: str, check_batch: str | Path | None = None) -> dict[str, float]:
    """The run's final model on the check batch (``ship.check_numbers``; by default the shipped demo model's
    batch of ``task``), written to ``check_numbers.json``."""
    from leffa.assets import DEMO_MODEL_DIR
    from train.synthetic.experiment import load_run
    from train.synthetic.ship import BATCH_FILE, TASKS as DEMO_TASKS, check_numbers, read_check_batch

    if check_batch is None:
        demo_task = next(name for name, synthetic in DEMO_TASKS.items() if synthetic == task)
        check_batch = DEMO_MODEL_DIR / demo_task / BATCH_FILE
    numbers = check_numbers(load_run(run), read_check_batch(check_batch))
    (Path(run) / CHECK_FILE).write_text(json.dumps(numbers, indent=2) + "\n")
    return numbers


def summary_row(probes: Sequence[Mapping[str, float]], check: Mapping[str, float] | None = None) -> dict[str, float]:
    """One run's line of the benchmark table: layer-mean EPE (t = 100) at every probed step, and at the last
    step the best layer, the best single head, the layer-mean EPE at t = 300, the attention entropy (mean
    over layers) and, with ``check``, the sampled check-batch numbers."""
    last = probes[-1]
    row = {f"epe@{line['step']}": line["t100/epe/layer_mean"] for line in probes}
    row["best layer"] = last["t100/epe/best_layer"]
    row["best head"] = min(v for k, v in last.items() if k.startswith("t100/epe/head/"))
    row["epe t300"] = last["t300/epe/layer_mean"]
    row["entropy"] = mean_entropy(last)
    if check is not None:
        row.update({name: check[key] for name, key in SAMPLE_COLUMNS.items()})
    return row


def mean_entropy(scores: Mapping[str, float], timestep: int = 100) -> float:
    """The attention entropy of :func:`flow_probe` scores at ``timestep``, averaged over layers (nats)."""
    return float(np.mean([v for k, v in scores.items() if k.startswith(f"t{timestep}/entropy/")]))


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Runs (name -> :func:`summary_row`) as a Markdown table; a column a run lacks stays empty.

    The ``epe@<step>`` columns come first in step order, whichever run has them (a probed start at step 0
    beside runs probed from step 50), then the others in the order the rows give them.
    """
    keys = list(dict.fromkeys(key for row in rows.values() for key in row))
    steps = sorted((key for key in keys if key.startswith("epe@")), key=lambda key: int(key[4:]))
    columns = steps + [key for key in keys if not key.startswith("epe@")]
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in rows.items():
        cells = [f"{row[key]:.3f}" if key in SAMPLE_COLUMNS and key in row
                 else f"{row[key]:.2f}" if key in row else "" for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_run_row(run: str | Path) -> dict[str, float]:
    """:func:`summary_row` of a probed run folder (with its check numbers when they were measured)."""
    run = Path(run)
    if not (run / PROBE_FILE).is_file():
        raise FileNotFoundError(f"{run / PROBE_FILE} not found; run: python -m train.synthetic.probe {run}")
    probes = [json.loads(line) for line in (run / PROBE_FILE).read_text().splitlines() if line]
    check = json.loads((run / CHECK_FILE).read_text()) if (run / CHECK_FILE).is_file() else None
    return summary_row(probes, check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Flow-error probes of synthetic runs (train/synthetic/probe.py)")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--task", choices=TASKS, default="tryon")
    parser.add_argument("--cache-dir", default="runs/synthetic/cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="also sample the final model on the check batch")
    parser.add_argument("--skip-probed", action="store_true", help="keep a run's probe_log.jsonl if it has one")
    parser.add_argument("--table", help="write the Markdown table of the runs to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for run in args.runs:
        if not (args.skip_probed and (Path(run) / PROBE_FILE).is_file()):
            last = probe_run(run, args.task, args.cache_dir)[-1]
            print(f"{run}: step {last['step']} layer-mean EPE t100 {last['t100/epe/layer_mean']:.2f} px")
        if args.check and not (args.skip_probed and (Path(run) / CHECK_FILE).is_file()):
            numbers = check_run(run, args.task)
            print(f"{run}: garment L1 {numbers['plain/garment_l1']:.3f}, SSIM {numbers['plain/garment_ssim']:.3f}")
    if args.table:
        table = markdown_table({Path(run).name: read_run_row(run) for run in args.runs})
        Path(args.table).write_text(table)
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
