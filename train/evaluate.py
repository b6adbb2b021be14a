"""Evaluate a Leffa model on a dataset's test pairs: generate every image, then score the folder.

    accelerate launch train/evaluate.py --checkpoint model.safetensors --dataset vitonhd \\
        --data-root data/VITON-HD --mode paired --size 1024 768 --output-dir eval/vitonhd-paired

Generation is sharded over the accelerate processes (batches of consecutive pairs, dealt round-robin);
the images are gathered to the main process, which writes ``<output-dir>/images/<stem>.png`` (generated)
and ``<output-dir>/ground_truth/<stem>.png`` (the dataset's person image at the evaluated size), scores
them with :func:`leffa.eval.metrics.evaluate_folders` and writes ``report.json`` / ``report.md`` with the
settings. A batch's seed is ``seed * 1000003 + its first pair index``, so the images depend on the seed and
the batch size but not on the number of processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import from the repository root (see train/train.py).
    _REPO = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO / "train"]
    sys.path.insert(0, str(_REPO))

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from PIL import Image
from torch.utils.data import Dataset

from leffa.eval.features import CleanFIDInception, FeatureExtractor
from leffa.eval.metrics import LPIPS, evaluate_folders, write_report
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.transforms import tensor_to_uint8
from train.batches import generate_batch, stack_items
from train.datasets import DRESSCODE_CATEGORIES, DeepFashionPoseDataset, DressCodeDataset, VitonHDDataset
from train.synthetic.data import SyntheticTryOnDataset

logger = logging.getLogger(__name__)

DATASETS = ("vitonhd", "dresscode", "deepfashion", "synthetic")
PAIRED_METRICS = ("psnr", "ssim", "lpips_squeeze", "lpips_alex")
SET_METRICS = ("fid", "kid")
METRICS = PAIRED_METRICS + SET_METRICS
#: Counts and the extractor's name are always reported alongside the chosen metrics.
REPORT_EXTRAS = ("num_images", "num_reference_images")


@dataclass
class EvalOptions:
    """Everything that defines an evaluation run (also written into the report)."""

    checkpoint: str
    dataset: str
    output_dir: str
    data_root: str | None = None
    mode: str = "paired"
    category: str | None = None
    size: tuple[int, int] = (1024, 768)
    steps: int = 30
    guidance: float = 2.5
    seed: int = 42
    ref_acceleration: bool = False
    repaint: bool = False
    batch_size: int = 4
    dtype: str = "fp32"
    limit: int | None = None
    metrics: tuple[str, ...] = ()
    pretrained_metrics: bool = True
    fid_reference_dir: str | None = None
    synthetic_length: int = 100

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.mode not in ("paired", "unpaired"):
            raise ValueError(f"mode must be paired or unpaired; got {self.mode!r}")
        if self.dataset != "synthetic" and self.data_root is None:
            raise ValueError(f"--data-root is required for the {self.dataset} dataset")
        if self.dataset in ("deepfashion", "synthetic") and self.mode != "paired":
            raise ValueError(f"the {self.dataset} dataset has only paired test pairs; use --mode paired")
        if (self.dataset == "dresscode") != (self.category is not None):
            raise ValueError("--category is required for dresscode and applies only to it")
        for name in ("steps", "batch_size", "synthetic_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if not self.metrics:
            self.metrics = METRICS if self.mode == "paired" else SET_METRICS
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        if self.mode == "unpaired" and any(m in PAIRED_METRICS for m in self.metrics):
            raise ValueError(
                f"{', '.join(PAIRED_METRICS)} need ground truth: use --mode paired or --metrics fid kid"
            )
        if not self.pretrained_metrics and any(m in SET_METRICS for m in self.metrics):
            raise ValueError(
                "FID/KID have no random-weight variant (they need clean-fid's TF-Inception weights): "
                f"drop --random-metric-weights or pick --metrics from {', '.join(PAIRED_METRICS)}"
            )


def build_test_dataset(options: EvalOptions) -> Dataset:
    """The test split in the requested mode at the evaluated size, without augmentation."""
    size = tuple(options.size)
    if options.dataset == "vitonhd":
        return VitonHDDataset(options.data_root, "test", options.mode, size)
    if options.dataset == "dresscode":
        return DressCodeDataset(options.data_root, options.category, "test", options.mode, size)
    if options.dataset == "deepfashion":
        return DeepFashionPoseDataset(options.data_root, "test", size)
    return SyntheticTryOnDataset("test", size, options.synthetic_length)


def item_stem(item: Mapping, index: int) -> str:
    """Output file stem of a dataset item: its person image's stem, else its index."""
    name = item.get("name")
    return Path(name).stem if isinstance(name, str) else f"{index:06d}"


def shard(count: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This process's batches of pair indices: consecutive batches of the whole set, dealt round-robin.

    Batches do not depend on the process count (so neither do the images); every process gets the same
    number of rounds (its last may be empty) so the per-batch gathers line up.
    """
    batches = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    rounds = math.ceil(len(batches) / world_size)
    mine = batches[rank::world_size]
    return mine + [[] for _ in range(rounds - len(mine))]


def generate(
    pipeline: LeffaPipeline, dataset: Dataset, options: EvalOptions, accelerator: Accelerator
) -> list[str]:
    """Generate every test pair; the main process writes predictions and ground truth; returns the stems."""
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    output = Path(options.output_dir)
    pred_dir, gt_dir = output / "images", output / "ground_truth"
    if accelerator.is_main_process:
        pred_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
    stems: list[str] = []
    seen: set[str] = set()
    for indices in shard(count, accelerator.process_index, accelerator.num_processes, options.batch_size):
        results = []
        if indices:
            items = [dataset[i] for i in indices]
            batch = stack_items(items)
            images = generate_batch(
                pipeline,
                batch,
                num_inference_steps=options.steps,
                guidance_scale=options.guidance,
                generator=torch.Generator(pipeline.model.device).manual_seed(
                    options.seed * 1_000_003 + indices[0]
                ),
                ref_acceleration=options.ref_acceleration,
                repaint=options.repaint,
                output_type="np",
            ).images
            truth = tensor_to_uint8(batch["image"])
            results = [
                (item_stem(item, i), p, t)
                for i, item, p, t in zip(indices, items, images, truth, strict=True)
            ]
        for stem, prediction, target in gather_object(results):
            if stem in seen:
                raise ValueError(
                    f"two test pairs produce the output name {stem!r}; person names must be unique"
                )
            seen.add(stem)
            if accelerator.is_main_process:
                Image.fromarray(prediction).save(pred_dir / f"{stem}.png")
                Image.fromarray(target).save(gt_dir / f"{stem}.png")
            stems.append(stem)
    return stems


def score(
    options: EvalOptions,
    *,
    device: torch.device | str = "cpu",
    feature_extractor: FeatureExtractor | None = None,
    lpips_models: Mapping[str, LPIPS] | None = None,
) -> dict:
    """Metrics of ``<output_dir>/images`` against ``ground_truth`` (FID/KID reference: ``fid_reference_dir``).

    Defaults: clean-fid's TF-Inception, and LPIPS with pretrained backbones (random ones when
    ``pretrained_metrics`` is False).
    """
    output = Path(options.output_dir)
    wanted = set(options.metrics)
    torch.manual_seed(0)  # random LPIPS backbones are reproducible
    if lpips_models is None:
        lpips_models = {
            name: LPIPS(name, pretrained=options.pretrained_metrics)
            for name in ("squeeze", "alex")
            if f"lpips_{name}" in wanted
        }
    set_metrics = bool(wanted & set(SET_METRICS))
    if feature_extractor is None and set_metrics:
        feature_extractor = CleanFIDInception(device)
    results = evaluate_folders(
        output / "images",
        output / "ground_truth",
        paired=bool(wanted & set(PAIRED_METRICS)),
        set_metrics=set_metrics,
        lpips_models=lpips_models,
        feature_extractor=feature_extractor,
        fid_reference_dir=options.fid_reference_dir,
        batch_size=options.batch_size,
        device=device,
    )
    keep = wanted | set(REPORT_EXTRAS) | ({"feature_extractor"} if wanted & set(SET_METRICS) else set())
    return {key: value for key, value in results.items() if key in keep}


def settings_of(options: EvalOptions, num_processes: int) -> dict:
    """Report settings: the options (lists joined) plus the process count and metric weights."""
    settings = {key: value for key, value in asdict(options).items() if value is not None}
    if options.dataset != "synthetic":
        del settings["synthetic_length"]
    settings["size"] = "x".join(str(s) for s in options.size)
    settings["metrics"] = ", ".join(options.metrics)
    settings["metric_weights"] = "pretrained" if options.pretrained_metrics else "random (not comparable)"
    settings["lpips_backbones"] = (
        ", ".join(
            label
            for name, label in (("squeeze", "SqueezeNet"), ("alex", "AlexNet"))
            if f"lpips_{name}" in options.metrics
        )
        or "none"
    )
    settings["num_processes"] = num_processes
    return settings


def evaluate(
    options: EvalOptions,
    accelerator: Accelerator | None = None,
    *,
    model: LeffaModel | None = None,
    feature_extractor: FeatureExtractor | None = None,
    lpips_models: Mapping[str, LPIPS] | None = None,
) -> dict | None:
    """Generate and score; the main process writes the report and returns the results (others: None).

    An accelerator made here is ended here: its process group is destroyed before the process exits, since a
    gloo group left to the interpreter's shutdown can abort the process (SIGABRT) after the work is done."""
    owned = accelerator is None
    accelerator = accelerator or Accelerator()
    try:
        if model is None:
            model = LeffaModel.from_pretrained(options.checkpoint, device=accelerator.device, dtype=options.dtype)
        pipeline = LeffaPipeline(model)
        generate(pipeline, build_test_dataset(options), options, accelerator)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        results = score(
            options, device=accelerator.device, feature_extractor=feature_extractor, lpips_models=lpips_models
        )
        write_report(
            results, settings_of(options, accelerator.num_processes), Path(options.output_dir) / "report"
        )
        return results
    finally:
        if owned:
            accelerator.end_training()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train/evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Leffa .pth/.safetensors (released or exported)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", help="dataset folder (not for synthetic)")
    parser.add_argument("--mode", default="paired", choices=("paired", "unpaired"))
    parser.add_argument("--category", choices=DRESSCODE_CATEGORIES + ("all",), help="DressCode category")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 768), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--steps", type=int, default=30, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=2.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ref-acceleration", action="store_true", help="run the reference UNet once")
    parser.add_argument("--repaint", action="store_true", help="paste the result into the person image")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per generation batch and process")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--metrics", nargs="+", choices=METRICS, help="default: all that the mode allows")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained-metrics",
        dest="pretrained_metrics",
        action="store_true",
        default=True,
        help="clean-fid's TF-Inception and torchvision's ImageNet LPIPS backbones, from the torch hub "
        "checkpoint folder (downloaded on first use when online; default)",
    )
    weights.add_argument(
        "--random-metric-weights",
        dest="pretrained_metrics",
        action="store_false",
        help="random LPIPS backbones, no FID/KID: offline smoke tests only, values are not comparable",
    )
    parser.add_argument("--fid-reference-dir", help="FID/KID reference images (default: the ground truth)")
    parser.add_argument(
        "--synthetic-length", type=int, default=100, help="test pairs of the synthetic dataset"
    )
    return parser


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    values = vars(args).copy()
    values["size"] = tuple(values["size"])
    values["metrics"] = tuple(values["metrics"] or ())
    return EvalOptions(**values)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    results = evaluate(options)
    if results is not None:
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())
        logger.info(f"{shown}; report in {Path(options.output_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
