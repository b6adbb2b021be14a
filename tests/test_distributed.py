"""Two processes (``torchrun``, gloo on the CPU): training as one process, resuming, evaluating and a batch of
try-ons split over processes, each checked against a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from leffa.app.cli import main as cli_main
from leffa.core.configs import load_base_configs
from leffa.core.serialization import save_state_dict
from tests.app_server import free_port
from tests.conftest import read_run_log
from train.config import load_config
from train.evaluate import main as evaluate_main
from train.train import Trainer

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "train" / "configs" / "synthetic" / "tiny.yaml"
EXAMPLES = REPO / "assets" / "examples"
LEARNING_RATE, STEPS = 1e-3, 3
#: The tiny synthetic run with the Leffa loss and the flow teacher on every sample, EMA, a checkpoint at
#: step 2 and a log line per step.
COMMON = (
    "data.length=16", f"train.max_steps={STEPS}", f"optim.learning_rate={LEARNING_RATE}", "logging.log_with=jsonl",
    "logging.log_every=1", "logging.sample_every=0", "logging.progress_bar=false", "checkpoint.every=2",
    "leffa.enabled=true", "leffa.weight=0.1", "leffa.theta_timestep=1000", "leffa.temperature=1.0",
    "flow_supervision.enabled=true", "flow_supervision.weight=0.5", "flow_supervision.temperature=1.0",
    "flow_supervision.theta_timestep=1000", "train.ema.enabled=true",
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate")]


def _torchrun(*arguments: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` on the CPU (accelerate's CPU processes: ``ACCELERATE_USE_CPU``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *arguments]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _train(output: Path, *overrides: str) -> subprocess.CompletedProcess:
    return _torchrun("train/train.py", "--config", str(SYNTHETIC), "--override", f"output_dir={output}",
                     "train.batch_size=1", *COMMON, *overrides)


def _losses(run: Path) -> list[float]:
    lines = (run / "logs" / "synthetic-tiny" / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss/total"] for line in lines]


def test_two_processes_train_as_one_and_resume_exactly(tmp_path):
    Trainer(load_config(SYNTHETIC, (f"output_dir={tmp_path / 'one'}", "train.batch_size=2", *COMMON))).fit()
    two = _train(tmp_path / "two")
    _train(tmp_path / "resumed", "train.max_steps=2")
    _train(tmp_path / "resumed", "--resume", "latest")

    # Same global batch (2 × 1 = 1 × 2), same samples and draws: the same losses at every step ...
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    assert len(_losses(tmp_path / "two")) == STEPS  # logged by the main process only
    one, two_weights = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("one", "two"))
    differences = torch.cat([(one[name] - two_weights[name]).abs().flatten() for name in one])
    # ... and the same weights up to the order of floating-point sums: DDP adds the gradients in another
    # order, and AdamW divides by sqrt(v), so a weight whose gradient is ~0 can move by up to the learning
    # rate per step either way; a tenth of that bound holds with room, for a handful of elements only.
    assert differences.max() <= 0.1 * LEARNING_RATE * STEPS
    assert (differences > 1e-6).float().mean() < 1e-3

    # Stopped at step 2 and resumed under two processes: exactly the uninterrupted run.
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(resumed[name], two_weights[name]) for name in two_weights)
    ema = [load_file(str(tmp_path / run / "model-ema.safetensors")) for run in ("two", "resumed")]
    assert all(torch.equal(ema[0][name], ema[1][name]) for name in ema[0])
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "two")

    # Written once: one set of files per checkpoint (each process saves only its own random state).
    checkpoint = tmp_path / "two" / "checkpoints" / "step-00000002"
    assert sorted(path.name for path in checkpoint.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl",
        "scheduler.bin", "training_state.json",
    ]
    assert json.loads((checkpoint / "training_state.json").read_text())["samples_seen"] == 4
    assert (two.stdout + two.stderr).count("exported ") == 1


def test_two_processes_evaluate_as_one(tmp_path, tiny_model):
    checkpoint = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.safetensors", configs=load_base_configs("tiny"))
    arguments = [
        "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--synthetic-length", "5", "--size", "64", "48",
        "--steps", "2", "--batch-size", "2", "--metrics", "psnr", "ssim", "--random-metric-weights",
    ]
    assert evaluate_main([*arguments, "--output-dir", str(tmp_path / "one")]) == 0
    _torchrun("train/evaluate.py", *arguments, "--output-dir", str(tmp_path / "two"))
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two")]
    assert reports[1]["settings"]["num_processes"] == 2 and reports[1]["results"]["num_images"] == 5
    assert reports[1]["results"] == pytest.approx(reports[0]["results"], rel=1e-6)
    images = [sorted((tmp_path / run / "images").iterdir()) for run in ("one", "two")]
    assert [path.name for path in images[0]] == [path.name for path in images[1]] and len(images[0]) == 5
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*images))  # no padding, no duplicate


def _pairs_file(folder: Path) -> Path:
    """Five pairs of the shipped examples, one listed twice (its second result is named ``-2``)."""
    rows = []
    for person, garment in ((0, 1), (1, 2), (2, 0), (0, 1), (1, 0)):
        rows.append(" ".join(str(EXAMPLES / name) for name in (
            f"person_{person:02d}.png", f"garment_{garment:02d}.png", f"mask_{person:02d}.png",
            f"densepose_{person:02d}.png",
        )))
    path = folder / "pairs.txt"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_batch_split_over_processes_writes_what_one_process_writes(tmp_path):
    pairs = _pairs_file(tmp_path)
    options = ["--pairs", str(pairs), "--tiny", "--device", "cpu", "--steps", "2", "--seed", "3"]
    assert cli_main(["tryon", *options, "-o", str(tmp_path / "one")]) == 0
    _torchrun("-m", "leffa", "tryon", *options, "-o", str(tmp_path / "two"))
    names = sorted(path.name for path in (tmp_path / "one").glob("*.png"))
    assert len(names) == 5 and "person_00__garment_01-2.png" in names
    assert names == sorted(path.name for path in (tmp_path / "two").glob("*.png"))
    for name in names:
        one, two = (Image.open(tmp_path / run / name) for run in ("one", "two"))
        assert one.tobytes() == two.tobytes(), name
    rows = read_run_log(tmp_path / "two")
    assert len(rows) == 5 and {row["rank"] for row in rows} == {0, 1}
    order = [row["name"] for row in read_run_log(tmp_path / "one")]
    assert sorted(row["name"] for row in rows if row["rank"] == 1) == sorted(order[1::2])

    # An interrupted run (two results lost) resumed shard by shard: only the missing pairs are made again.
    for name in names[:2]:
        (tmp_path / "two" / name).unlink()
    for shard in ("0/2", "1/2"):
        assert cli_main(["tryon", *options, "-o", str(tmp_path / "two"), "--shard", shard, "--skip-existing"]) == 0
    rows = read_run_log(tmp_path / "two")
    assert len(rows) == 7 and sorted(row["name"] for row in rows[5:]) == sorted(name[:-4] for name in names[:2])
    for name in names:
        assert Image.open(tmp_path / "one" / name).tobytes() == Image.open(tmp_path / "two" / name).tobytes()
