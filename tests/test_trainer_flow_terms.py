"""The trainer with the true-flow terms: the flow-supervision (warm-start) arm finds correspondence that the
diffusion-only baseline does not in a short run, pose-transfer data trains, and the flow travels only when
a term reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import load_config
from train.synthetic.data import render_split, to_batch
from train.synthetic.eval import flow_epe, teacher_forced
from train.train import Trainer

SYNTHETIC = Path(__file__).resolve().parents[1] / "train" / "configs" / "synthetic-tiny.yaml"
pytestmark = pytest.mark.usefixtures("fresh_accelerate")


def _trainer(tmp_path: Path, *overrides: str) -> Trainer:
    base = (
        f"output_dir={tmp_path / 'run'}",
        "data.length=64",
        "train.batch_size=4",
        "train.max_steps=12",
        "logging.log_with=none",
        "logging.sample_every=0",
        "logging.progress_bar=false",
        "checkpoint.every=1000",
    )
    return Trainer(load_config(SYNTHETIC, base + overrides))


def _layer_epe(trainer: Trainer) -> dict[str, float]:
    batch = to_batch(render_split("test", 4, (64, 48), 0), range(4))
    flows = teacher_forced(trainer.model.eval(), batch, (100,), temperature=1.0)[100]["flows"]
    valid = batch["flow_valid"] * batch["mask"]
    return {name: float(flow_epe(flow, batch["flow"], valid).mean()) for name, flow in flows.items()}


@pytest.mark.slow
def test_warm_start_arm_finds_correspondence_the_baseline_does_not(tmp_path: Path) -> None:
    """12 steps from the same random model and batches: supervision lowers the best layer's EPE by > 1 px."""
    baseline = _trainer(tmp_path / "a")
    taught = _trainer(tmp_path / "b", "flow_supervision.enabled=true")
    assert taught.batch_keys[-2:] == ("flow", "flow_valid") and "flow" not in baseline.batch_keys
    for _ in range(12):
        baseline.train_step()
        values = taught.train_step()
    assert values["loss/flow_supervision"] > 0
    plain, supervised = _layer_epe(baseline), _layer_epe(taught)
    assert min(supervised.values()) < min(plain.values()) - 1.0
    assert sum(supervised.values()) < sum(plain.values())


def test_pose_transfer_data_trains_with_both_terms(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path, "data.length=4", "data.synthetic_task=pose_transfer", "flow_supervision.enabled=true",
        "leffa.enabled=true", "leffa.temperature=1.0", "leffa.theta_timestep=1000", "train.reference_dropout=0.0",
    )
    item = trainer.dataset[0]
    assert torch.equal(item["mask"], torch.ones(1, 64, 48))
    values = trainer.train_step()
    assert values["loss/leffa"] > 0 and values["loss/flow_supervision"] > 0
    assert values["loss/total"] == pytest.approx(
        values["loss/diffusion"] + 1e-3 * values["loss/leffa"] + values["loss/flow_supervision"], rel=1e-5
    )
