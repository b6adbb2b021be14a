"""Command line: ``python -m leffa <command>``. Each command has ``--help``.

Exit codes: 0 on success, 1 on a runtime error or when any pair of a batch failed (messages on stderr,
one line per pair in ``log.jsonl``), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leffa.app.callbacks import ALL, AppCallbacks, GenerationSettings, TryOnInputs
from leffa.app.batch import LOG_NAME, Job, jobs_from_pairs_file, jobs_from_paths, run_jobs
from leffa.app.checkpoints import FILES, TASKS, MissingWeightsError, ensure_files, resolve_ckpt_dir
from leffa.app.runtime import (
    DEVICES, DTYPES, RESOLUTIONS, Runtime, missing_weights, released_runtime, tiny_runtime,
)
from leffa.app.service import TRYON_MODELS, Generation
from leffa.inspect.visualize import side_by_side
from preprocess.masks import CATEGORIES

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_CODES = "exit codes: 0 done, 1 runtime error or a failed pair (see stderr, log.jsonl), 2 bad arguments"
_DEFAULT_OUT = Path("outputs")


# ------------------------------------------------------------------------------------------- convert
def _convert(args: argparse.Namespace) -> int:
    import torch

    from leffa.core.model import LeffaModel, detect_base
    from leffa.core.serialization import check_state_dict, read_state_dict, save_state_dict

    state = read_state_dict(args.input)
    base = detect_base(state) if args.base == "auto" else args.base
    expected = {name: t.shape for name, t in LeffaModel.from_base(base, device="meta").state_dict().items()}
    check_state_dict(expected, state, hint=f"model base: {base}")
    out = save_state_dict(state, args.output, dtype=torch.float16 if args.fp16 else None)
    print(f"wrote {out} ({base}, {len(state)} tensors{', fp16' if args.fp16 else ''})")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ download
def _download(args: argparse.Namespace) -> int:
    root = resolve_ckpt_dir(args.ckpt_dir)
    if args.list:
        for task, names in TASKS.items():
            missing = missing_weights(task, root)
            print(f"{task}: {'complete' if missing is None else 'incomplete'} in {root}")
            for name in names:
                print(f"  {FILES[name]}")
        return EXIT_OK
    failed = False
    for task in args.tasks:
        if args.check:
            missing = missing_weights(task, root)
            print(f"{task}: complete in {root}" if missing is None else missing)
            failed |= missing is not None
        else:
            ensure_files(task, root, download=True)
            print(f"{task}: ready in {root}")
    return EXIT_ERROR if failed else EXIT_OK


# ------------------------------------------------------------------------------------ generation runs
Work = Callable[[AppCallbacks, Job], dict[str, Any]]


def _runtime(args: argparse.Namespace) -> Runtime:
    if args.tiny:
        return tiny_runtime(device=args.device, dtype=args.dtype)
    return released_runtime(
        args.ckpt_dir, device=args.device, dtype=args.dtype, offload=args.offload,
        download=not args.no_download,
    )


def _jobs(args: argparse.Namespace, extra_names: Sequence[str]) -> list[Job]:
    if args.pairs is not None:
        return jobs_from_pairs_file(args.pairs, extra_names, args.root)
    return jobs_from_paths(args.first, args.second, {name: getattr(args, name) for name in extra_names})


def _generate(args: argparse.Namespace, actions: AppCallbacks, job: Job, inspect: bool = False) -> Generation:
    settings = GenerationSettings(
        args.steps, args.guidance, args.seed, args.ref_acceleration, args.repaint, inspect
    )
    densepose = job.extras.get("densepose")
    if args.task == "pose-transfer":
        return actions.pose_transfer(
            job.first, job.second, densepose=densepose, resolution=args.resolution, settings=settings
        )
    inputs = TryOnInputs(
        job.first, job.second, args.model_type, args.category, job.extras.get("mask"), densepose,
        args.prepare_garment_png, args.resolution,
    )
    return actions.try_on(inputs, settings)


def _run_batch(args: argparse.Namespace, work: Work) -> int:
    extras = ("densepose",) if args.task == "pose-transfer" else ("mask", "densepose")
    jobs = _jobs(args, extras)
    actions = AppCallbacks(_runtime(args).store)
    report = run_jobs(
        jobs, lambda job: work(actions, job), args.out_dir, fatal=(MissingWeightsError,), stdout=sys.stdout,
        stderr=sys.stderr,
    )
    summary = f"{report.done} of {len(jobs)} done, {report.failed} failed; log: {args.out_dir / LOG_NAME}"
    if report.stopped is not None:
        summary += " (stopped early)"
    print(summary, file=sys.stderr if report.failed else sys.stdout)
    return EXIT_ERROR if report.failed else EXIT_OK


def _generation(args: argparse.Namespace) -> int:
    """``tryon`` and ``pose-transfer``: one result image per pair."""

    def work(actions: AppCallbacks, job: Job) -> dict[str, Any]:
        generation = _generate(args, actions, job)
        out = args.out_dir / f"{job.name}.png"
        generation.image.save(out)
        return {"output": str(out), "seed": generation.seed, "size": list(generation.image.size)}

    return _run_batch(args, work)


def _trace(args: argparse.Namespace) -> int:
    return _run_batch(args, lambda actions, job: _write_trace(args, actions, job))


def _write_trace(args: argparse.Namespace, actions: AppCallbacks, job: Job) -> dict[str, Any]:
    """Result, an overview (all layers averaged) and one panel per layer: heatmaps per point, flow, warp."""
    generation = _generate(args, actions, job, inspect=True)
    recorded = generation.trace
    width, height = generation.image.size
    points = args.point or [((width - 1) / 2, (height - 1) / 2)]
    folder = args.out_dir / job.name
    (folder / "layers").mkdir(parents=True, exist_ok=True)
    generation.image.save(folder / "result.png")

    def panel(layer: str) -> np.ndarray:
        views = [actions.inspect(generation, point, layer) for point in points]
        images = [view.heatmap for view in views] + [views[0].flow, views[0].warped_reference]
        labels = [f"attention at ({x:.0f}, {y:.0f})" for x, y in points] + ["flow", "warped reference"]
        if layer == ALL:
            images = [view.marked_result for view in views] + images + [actions.legend(min(height, 128))]
            labels = [f"point ({x:.0f}, {y:.0f})" for x, y in points] + labels + ["flow legend"]
        return side_by_side(images, labels)

    Image.fromarray(panel(ALL)).save(folder / "overview.png")
    names = {f"{index:02d}.png": layer for index, layer in enumerate(recorded.layers)}
    for name, layer in names.items():
        Image.fromarray(panel(layer)).save(folder / "layers" / name)
    summary = {
        "seed": generation.seed, "points": [list(p) for p in points], "timesteps": recorded.timesteps,
        "layers": names,
    }
    (folder / "trace.json").write_text(json.dumps(summary, indent=2))
    return {"output": str(folder), "seed": generation.seed}


# ---------------------------------------------------------------------------------------- arguments
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _task(text: str) -> str:
    if text not in TASKS:
        raise argparse.ArgumentTypeError(f"unknown task {text!r}; choose from {', '.join(TASKS)}")
    return text


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected X,Y in pixels of the result, got {text!r}") from error
    return x, y


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--ckpt-dir", type=Path, help="released weights (default: $LEFFA_CKPT_DIR or ./ckpts)")
    group.add_argument("--device", default="auto", choices=DEVICES)
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: fp16 on CUDA, else fp32")
    group.add_argument("--offload", action="store_true", help="keep Leffa models on the CPU between runs")
    group.add_argument("--no-download", action="store_true", help="fail rather than download missing weights")
    group.add_argument("--tiny", action="store_true", help="built-in demo model (needs --mask, --densepose)")


def _generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--steps", type=_positive_int, default=30, help="denoising steps (default 30)")
    group.add_argument("--guidance", type=float, default=2.5, help="guidance scale (default 2.5)")
    group.add_argument("--seed", type=int, default=-1, help="-1 (default) picks one at random; it is logged")
    group.add_argument("--ref-acceleration", action="store_true", help="run the reference UNet once (faster)")
    group.add_argument(
        "--resolution", default="full", choices=RESOLUTIONS, help="the model's size, or half of it for speed"
    )


def _input_options(parser: argparse.ArgumentParser, first: str, second: str, extras: dict[str, str]) -> None:
    """Two positional inputs (files or folders) or ``--pairs``; ``extras`` are per-person files."""
    for dest, name in (("first", first), ("second", second)):
        parser.add_argument(dest, nargs="?", type=Path, metavar=name.upper(), help=f"{name} photo or folder")
    group = parser.add_argument_group("batch")
    columns = " ".join([first, second, *(f"[{name}]" for name in extras)])
    group.add_argument("--pairs", type=Path, help=f"text file, one pair per line: {columns} ('-' = none)")
    group.add_argument("--root", type=Path, help="folder of the pairs file's paths (default: the file's own)")
    group.add_argument("-o", "--out-dir", type=Path, help="results and log.jsonl (default: outputs/COMMAND)")
    for name, text in extras.items():
        help_text = f"{text}: one file, or a folder of them named as the persons"
        group.add_argument(f"--{name}", type=Path, help=help_text)


def _tryon_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("try-on")
    group.add_argument("--model-type", default="viton_hd", choices=list(TRYON_MODELS))
    group.add_argument("--category", default="upper_body", choices=list(CATEGORIES))
    group.add_argument("--prepare-garment-png", action="store_true", help="centre a cut-out PNG on white")
    group.add_argument("--repaint", action="store_true", help="keep all outside the mask as photographed")


def _add_convert(commands) -> None:
    convert = commands.add_parser(
        "convert",
        help="check a released .pth and write a .safetensors copy (optionally fp16)",
        description="Check a checkpoint against its base model strictly and write a copy for faster loads.",
    )
    convert.add_argument("input", help="released .pth (or .safetensors) checkpoint")
    convert.add_argument("output", help="output path ending in .safetensors (or .pth)")
    convert.add_argument("--fp16", action="store_true", help="store floating point tensors as float16")
    convert.add_argument(
        "--base", default="auto", choices=["auto", "sd15-inpainting", "sdxl-inpainting", "tiny"],
        help="model base (default: detected from the keys)",
    )
    convert.set_defaults(handler=_convert)


def _add_download(commands) -> None:
    download = commands.add_parser(
        "download", help="fetch the released weights a task needs",
        description="Download only the files a task needs from the Hugging Face repo into the checkpoint "
        "folder; files already there are not fetched again.",
    )
    download.add_argument("tasks", nargs="*", type=_task, metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    download.add_argument("--ckpt-dir", type=Path, help="default: $LEFFA_CKPT_DIR or ./ckpts")
    download.add_argument("--check", action="store_true", help="no download; exit 1 if files are missing")
    download.add_argument("--list", action="store_true", help="list the tasks, their files and completeness")
    download.set_defaults(handler=_download)


def _add_generation_commands(commands) -> None:
    tryon = commands.add_parser(
        "tryon", help="dress a person in a garment (one pair, folders, or a pairs file)",
        description="Virtual try-on. Results are cropped back to the person photo's framing.",
    )
    _input_options(tryon, "person", "garment", {"mask": "mask", "densepose": "DensePose"})
    _tryon_options(tryon)
    _generation_options(tryon)
    _model_options(tryon)
    tryon.set_defaults(handler=_generation, task="tryon")

    pose = commands.add_parser(
        "pose-transfer", help="show a person in the pose of another photo",
        description="Pose transfer: the appearance of the first photo in the pose of the second.",
    )
    _input_options(pose, "person", "target", {"densepose": "DensePose of the target"})
    _generation_options(pose)
    _model_options(pose)
    pose.set_defaults(handler=_generation, task="pose-transfer", repaint=False)

    trace = commands.add_parser(
        "trace", help="write attention heatmaps and flow fields of a run",
        description="Generate while recording attention and write, per pair, the result, an overview (layers "
        "averaged) and one panel per layer: attention at the points, flow colour wheel, warped reference.",
    )
    _input_options(trace, "person", "reference", {"mask": "mask", "densepose": "DensePose"})
    trace.add_argument("--task", default="tryon", choices=["tryon", "pose-transfer"])
    trace.add_argument(
        "--point", type=_point, action="append", help="X,Y in result pixels (repeatable; default: the centre)"
    )
    _tryon_options(trace)
    _generation_options(trace)
    _model_options(trace)
    trace.set_defaults(handler=_trace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m leffa", description="Leffa virtual try-on and pose transfer", epilog=EXIT_CODES
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(commands)
    _add_download(commands)
    _add_generation_commands(commands)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot express; a problem exits with code 2."""
    if args.command == "download" and not args.tasks and not args.list:
        parser.error("download: name at least one TASK (or use --list)")
    if not hasattr(args, "first"):
        return
    if args.pairs is not None and (args.first is not None or args.second is not None):
        parser.error(f"{args.command}: give either two inputs or --pairs, not both")
    if args.pairs is None and (args.first is None or args.second is None):
        parser.error(f"{args.command}: give two inputs (files or folders) or --pairs FILE")
    if args.pairs is not None and (getattr(args, "mask", None) or args.densepose):
        parser.error(f"{args.command}: with --pairs, put masks and DensePose in the pairs file's columns")
    if args.task == "pose-transfer" and getattr(args, "mask", None) is not None:
        parser.error(f"{args.command}: --mask is for try-on; pose transfer takes --densepose only")
    args.out_dir = args.out_dir or _DEFAULT_OUT / args.command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
