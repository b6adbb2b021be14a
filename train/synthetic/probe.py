"""Correspondence probes of a synthetic run: per-layer and per-head flow error and attention entropy.

Why: the Leffa-effect experiment (``docs/synthetic-benchmark.md``) follows how a fine-tune keeps or loses
the correspondence a warm start gave it; a layer's head-averaged flow (what the Leffa loss sees) can sit at
the garment's centre while single heads point at the right place, so both are measured.

    python -m train.synthetic.probe runs/synthetic/grid-strong-l1e-1-s0     # every checkpoint of a run

writes ``<run>/probe_log.jsonl``, one line per checkpoint (the trainer keeps them all with
``checkpoint.keep: null``; the stage configs checkpoint every 50 steps).
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
    """Probe every checkpoint of a trainer run folder and its exported model; writes ``probe_log.jsonl``."""
    from leffa.app.demo import load_model_folder
    from train.checkpoints import checkpoint_step, list_checkpoints, read_checkpoint_weights

    run = Path(run)
    model = load_model_folder(run, "cpu", torch.float32, base="synthetic", hint="train the run first")
    split = probe_split(task, cache_dir=cache_dir)
    lines = []
    for checkpoint in list_checkpoints(run):
        model.load_state_dict(read_checkpoint_weights(checkpoint))
        lines.append({"step": checkpoint_step(checkpoint), **flow_probe(model, split)})
    (run / "probe_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Flow-error probes of synthetic runs (train/synthetic/probe.py)")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--task", choices=TASKS, default="tryon")
    parser.add_argument("--cache-dir", default="runs/synthetic/cache")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for run in args.runs:
        last = probe_run(run, args.task, args.cache_dir)[-1]
        print(f"{run}: step {last['step']} layer-mean EPE t100 {last['t100/epe/layer_mean']:.2f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
