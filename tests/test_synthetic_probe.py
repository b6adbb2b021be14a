"""The Leffa-effect probes (train/synthetic/probe.py): per-layer numbers agree with the independent
teacher-forced evaluation, per-head and best-layer keys are consistent, and the benchmark table is built
from them as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from train.synthetic.data import render_split, to_batch
from train.synthetic.eval import flow_epe, teacher_forced
from train.synthetic.probe import flow_probe, markdown_table, read_run_row, summary_row


def test_flow_probe_layers_match_teacher_forced_evaluation(tiny_model) -> None:
    split = render_split("test", 2, (64, 48))
    scores = flow_probe(tiny_model, split, timesteps=(100,), seed=0)
    batch = to_batch(split, [0, 1])
    flows = teacher_forced(tiny_model, batch, (100,), temperature=1.0, seed=0)[100]["flows"]
    valid = batch["flow_valid"] * batch["mask"]
    layers = {name: float(flow_epe(flow, batch["flow"], valid).mean()) for name, flow in flows.items()}
    for name, expected in layers.items():
        assert scores[f"t100/epe/layer/{name}"] == pytest.approx(expected, rel=1e-4), name
    assert scores["t100/epe/best_layer"] == pytest.approx(min(layers.values()), rel=1e-4)
    heads = {key for key in scores if key.startswith("t100/epe/head/")}
    per_layer_heads = {name: len([key for key in heads if key.startswith(f"t100/epe/head/{name}/")]) for name in layers}
    assert all(count >= 1 for count in per_layer_heads.values()), per_layer_heads
    assert len(heads) == sum(per_layer_heads.values())
    for name in layers:
        # Entropy of a distribution over the layer's keys: between 0 and ln(number of keys).
        h, w = flows[name].shape[1:3]
        assert 0 <= scores[f"t100/entropy/{name}"] <= math.log(h * w) + 1e-5


def _probe_line(step: int, mean: float) -> dict[str, float]:
    return {
        "step": step,
        "t100/epe/layer_mean": mean,
        "t100/epe/best_layer": mean - 1,
        "t100/epe/head/a/0": mean + 2,
        "t100/epe/head/a/1": mean - 2,
        "t300/epe/layer_mean": mean + 0.5,
        "t100/entropy/a": 4.0,
        "t100/entropy/b": 3.0,
    }


def test_summary_row_and_table(tmp_path: Path) -> None:
    probes = [_probe_line(50, 9.0), _probe_line(100, 7.0)]
    check = {"plain/garment_l1": 0.15, "plain/garment_ssim": 0.3, "accel/garment_l1": 0.149, "accel/garment_ssim": 0.31}
    row = summary_row(probes, check)
    assert row == {
        "epe@50": 9.0, "epe@100": 7.0, "best layer": 6.0, "best head": 5.0, "epe t300": 7.5, "entropy": 3.5,
        "L1": 0.15, "SSIM": 0.3, "accel L1": 0.149, "accel SSIM": 0.31,
    }
    short = summary_row(probes[:1])
    table = markdown_table({"long": row, "short": short}).splitlines()
    assert table[0].startswith("| run | epe@50 | epe@100 | best layer |")
    assert table[2].startswith("| long | 9.00 | 7.00 | 6.00 | 5.00 | 7.50 | 3.50 | 0.150 | 0.300 |")
    assert table[3] == "| short | 9.00 |  | 8.00 | 7.00 | 9.50 | 3.50 |  |  |  |  |"
    start = summary_row([_probe_line(0, 4.0)])
    assert markdown_table({"long": row, "start": start}).splitlines()[0].startswith(
        "| run | epe@0 | epe@50 | epe@100 | best layer |"
    )
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="probe_log.jsonl not found; run: python -m train.synthetic.probe"):
        read_run_row(run)
    (run / "probe_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in probes))
    assert read_run_row(run) == summary_row(probes)
    (run / "check_numbers.json").write_text(json.dumps(check))
    assert read_run_row(run) == row


def test_check_run_measures_on_the_tasks_shipped_check_batch(tmp_path: Path, monkeypatch) -> None:
    import shutil

    import train.synthetic.ship as ship
    from leffa.assets import DEMO_MODEL_DIR
    from train.synthetic.probe import check_run

    seen = {}

    def fake_numbers(model, batch):
        seen["count"] = batch["image"].shape[0]
        return {"plain/garment_l1": float(batch["reference"][0, 0, 0, 0])}

    monkeypatch.setattr(ship, "check_numbers", fake_numbers)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "unet.json", "vae.json", "scheduler.json"):
        shutil.copy(DEMO_MODEL_DIR / "pose_transfer" / name, run / name)
    numbers = check_run(run, "pose_transfer")
    expected = ship.read_check_batch(DEMO_MODEL_DIR / "pose_transfer" / ship.BATCH_FILE)["reference"][0, 0, 0, 0]
    assert numbers == {"plain/garment_l1": float(expected)} and seen["count"] == ship.CHECK_BATCH_COUNT
    assert json.loads((run / "check_numbers.json").read_text()) == numbers


def test_probe_run_of_a_model_folder_without_checkpoints_probes_its_model(tmp_path: Path, monkeypatch) -> None:
    import shutil

    import train.synthetic.probe as probe
    from leffa.assets import DEMO_MODEL_DIR

    monkeypatch.setattr(probe, "probe_split", lambda task, cache_dir=None: {"task": task})
    monkeypatch.setattr(probe, "flow_probe", lambda model, split: {"t100/epe/layer_mean": 2.5, "task": split["task"]})
    run = tmp_path / "exported"
    run.mkdir()
    for name in ("model.safetensors", "unet.json", "vae.json", "scheduler.json"):
        shutil.copy(DEMO_MODEL_DIR / "virtual_tryon" / name, run / name)
    assert probe.probe_run(run, "tryon") == [{"step": 0, "t100/epe/layer_mean": 2.5, "task": "tryon"}]
    (run / "train_info.json").write_text(json.dumps({"steps": 80}))
    assert probe.probe_run(run, "tryon")[0]["step"] == 80
    assert json.loads((run / "probe_log.jsonl").read_text())["step"] == 80
