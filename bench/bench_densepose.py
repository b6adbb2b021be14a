"""Time DensePose R50-FPN on one image with random weights (no checkpoint needed).

Usage: ``python bench/bench_densepose.py --height 1024 --width 768 --repeats 3 --people 1``

Random weights detect nothing meaningful, so the box classifier is biased: ``--people N`` makes every
proposal a person and keeps the best N (the charts cost ~15 GMAC per person); the ``no person`` row
biases it the other way (backbone, RPN and box head only). Prints a markdown table of median and best
wall-clock times, plus a per-stage split of one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from bench.common import timed
from preprocess.densepose import DensePoseModel, DensePoseRCNN, DensePoseSettings
from preprocess.densepose.inputs import prepare_image


def _bias_classifier(network: DensePoseRCNN, person_logit: float) -> None:
    with torch.no_grad():
        predictor = network.roi_heads.box_predictor
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([person_logit, 0.0]))


@torch.inference_mode()
def _stage_times(model: DensePoseModel, image: np.ndarray) -> dict[str, float]:
    network, settings = model.network, model.settings
    times: dict[str, float] = {}
    start = time.perf_counter()
    batch, size = prepare_image(image, settings, model.device, model.dtype)
    batch = batch.contiguous(memory_format=model.memory_format)
    times["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    features = network.backbone(batch)
    times["backbone+fpn"] = time.perf_counter() - start
    start = time.perf_counter()
    proposals = network.proposal_generator(features, size, settings)
    times["rpn"] = time.perf_counter() - start
    start = time.perf_counter()
    boxes, _ = network.roi_heads.detect(features, proposals, size, settings)
    times["box head"] = time.perf_counter() - start
    start = time.perf_counter()
    if boxes.shape[0]:
        network.roi_heads.predict_charts(features, boxes)
    times["densepose branch"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--people", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    network = DensePoseRCNN()
    model = DensePoseModel(network, DensePoseSettings(detections_per_image=args.people)).to(args.device)
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)

    print(
        f"# DensePose R50-FPN, {args.width}x{args.height} image, {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print("\n| case | median s | best s | people |\n|---|---|---|---|")
    for label, logit in (("no person", -4.0), (f"{args.people} person(s)", 4.0)):
        _bias_classifier(network, logit)
        people = model.predict(image).num_people
        times = [timed(lambda: model.predict(image)) for _ in range(args.repeats)]
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} | {people} |")
    print("\n| stage | s |\n|---|---|")
    for stage, seconds in _stage_times(model, image).items():
        print(f"| {stage} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
