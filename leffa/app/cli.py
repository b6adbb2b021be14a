"""Command line: ``python -m leffa <command>``. Each command has ``--help``.

Exit codes: 0 on success, 1 on a runtime error or when any pair of a batch failed (messages on stderr,
one line per pair in ``log.jsonl``), 2 on bad arguments, 130 when stopped by Ctrl-C. No command replaces a
file that already exists unless given ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leffa.app.callbacks import AppCallbacks, TryOnInputs
from leffa.app.inspector import TRAINED, InspectorView
from leffa.app.batch import LOG_NAME, Job, jobs_from_pairs_file, jobs_from_paths, run_jobs
from leffa.weights import FILES, TASKS, MissingWeightsError, ensure_files, resolve_ckpt_dir
from leffa.app.runtime import (
    DEVICES, DTYPES, Runtime, memory_choice, missing_weights, released_runtime, tiny_runtime,
)
from leffa.app.models import RESOLUTIONS, TRYON_MODEL_TYPES
from leffa.app.service import Generation
from leffa.app.sharding import Shard, launcher_shard, parse_shard, shard_device
from leffa.core.memory import MEMORY_CHOICES
from leffa.core.settings import MAX_IMAGES, SamplingSettings
from leffa.core.speed import AUTOCAST_DTYPES, SDPA_BACKENDS, SpeedOptions
from leffa.inspect.visualize import side_by_side
from preprocess.images import load_image
from preprocess.crop import AUTO_CROP_CHOICES
from preprocess.mask_adjust import MaskAdjustments
from preprocess.masks import CATEGORIES

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = (
    "exit codes: 0 done, 1 runtime error or a failed pair (see stderr, log.jsonl), 2 bad arguments, "
    "130 interrupted (Ctrl-C)"
)
_OVERWRITE_HINT = "pass --overwrite to replace it, or choose another output"
_TINY_EXTRAS = (
    "the built-in tiny model (--tiny) has no preprocessing models, so it cannot make a mask or DensePose from "
    "a photo"
)


_DEFAULT_OUT = Path("outputs")


class UsageError(ValueError):
    """The command cannot run as asked (found before any model loads); exit code 2, like bad arguments."""


# ------------------------------------------------------------------------------------------- convert
def _convert(args: argparse.Namespace) -> int:
    """Check strictly, then copy (``leffa.core.serialization.convert_checkpoint``)."""
    from leffa.core.serialization import convert_checkpoint

    configs = convert_checkpoint(args.input, args.output, fp16=args.fp16, base=args.base, overwrite=args.overwrite)
    print(f"wrote {args.output} ({configs.name}{', fp16' if args.fp16 else ''})")
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


def _speed(args: argparse.Namespace) -> SpeedOptions:
    return SpeedOptions(
        compile=args.compile, channels_last=args.channels_last, sdpa_backend=args.sdpa_backend,
        autocast=args.autocast, vae_tiling=args.vae_tiling,
    )


def _runtime(args: argparse.Namespace, shard: Shard) -> Runtime:
    device = shard_device(args.device, shard)
    if args.tiny:
        return tiny_runtime(device=device, dtype=args.dtype, speed=_speed(args))
    return released_runtime(
        args.ckpt_dir, device=device, dtype=args.dtype, download=not args.no_download, speed=_speed(args),
    )


def _jobs(args: argparse.Namespace, extra_names: Sequence[str]) -> list[Job]:
    if args.pairs is not None:
        return jobs_from_pairs_file(args.pairs, extra_names, args.root)
    return jobs_from_paths(args.first, args.second, {name: getattr(args, name) for name in extra_names})


def _settings(args: argparse.Namespace, record_attention: bool = False) -> SamplingSettings:
    return SamplingSettings(
        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        ref_acceleration=args.ref_acceleration, repaint=args.repaint, record_attention=record_attention,
        num_images=getattr(args, "num_images", 1), memory=memory_choice(args.memory, args.offload),
    )


def _generate(
    args: argparse.Namespace, actions: AppCallbacks, job: Job, record_attention: bool = False
) -> Generation:
    settings = _settings(args, record_attention)
    densepose = job.extras.get("densepose")
    if args.task == "pose-transfer":
        return actions.pose_transfer(
            job.first, job.second, densepose=densepose, resolution=args.resolution, auto_crop=args.auto_crop,
            settings=settings,
        )
    inputs = TryOnInputs(
        job.first, job.second, args.model_type, args.category, job.extras.get("mask"), densepose,
        args.prepare_garment_png, args.resolution, args.auto_crop, _adjustments(args),
    )
    return actions.try_on(inputs, settings)


def _output(args: argparse.Namespace, job: Job) -> Path:
    """Where a job's result goes: ``NAME.png``, or the folder ``NAME`` for ``trace``."""
    return args.out_dir / (job.name if args.command == "trace" else f"{job.name}.png")


def _outputs(args: argparse.Namespace, job: Job) -> list[Path]:
    """Every file or folder a job writes: ``NAME.png``, then ``NAME_2.png``, ... for ``--num-images``."""
    first = _output(args, job)
    count = getattr(args, "num_images", 1)
    return [first] + [first.with_name(f"{job.name}_{index}.png") for index in range(2, count + 1)]


def _finished(args: argparse.Namespace, job: Job) -> bool:
    """Whether every output of ``job`` is there (``--skip-existing`` leaves it out)."""
    return all(path.exists() for path in _outputs(args, job))


def _refuse_existing_outputs(args: argparse.Namespace, jobs: Sequence[Job]) -> None:
    """Before any model loads: results the user already has are replaced only with ``--overwrite`` (with
    ``--skip-existing``, a pair left half done is made again, its own files replaced)."""
    existing = [path.name for job in jobs for path in _outputs(args, job) if path.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        shown = ", ".join(existing[:5]) + (f" (and {len(existing) - 5} more)" if len(existing) > 5 else "")
        raise FileExistsError(
            f"{len(existing)} of the results already exist in {args.out_dir}: {shown}; pass --overwrite to "
            "replace them, or choose another --out-dir"
        )


def _extras(args: argparse.Namespace) -> tuple[str, ...]:
    return ("densepose",) if args.task == "pose-transfer" else ("mask", "densepose")


def _check_jobs(args: argparse.Namespace, jobs: Sequence[Job]) -> None:
    """Before any model loads: the tiny model needs every pair's mask and DensePose, and trace points must
    lie inside each result."""
    if args.tiny:
        lacking = [job for job in jobs if any(name not in job.extras for name in _extras(args))]
        if lacking:
            names = ", ".join(f"{job.first.name} + {job.second.name}" for job in lacking[:3])
            more = f" (and {len(lacking) - 3} more)" if len(lacking) > 3 else ""
            columns = " and ".join(_extras(args))
            raise UsageError(f"{_TINY_EXTRAS}: give every pair its {columns} in the pairs file; missing for {names}{more}")
    if args.command == "trace":
        for job in jobs:
            _trace_points(args, job)


def _check_out_dir(out_dir: Path) -> None:
    """The output folder, or the nearest part of its path that exists, must be a folder (else mkdir's bare
    "[Errno 17] File exists")."""
    existing = next((path for path in (out_dir, *out_dir.parents) if path.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == out_dir:
        raise UsageError(f"the output folder {out_dir} is a file, not a folder; choose another --out-dir")
    raise UsageError(f"{existing} is a file, so the output folder {out_dir} cannot be made in it; choose another --out-dir")


def _run_batch(args: argparse.Namespace, work: Work) -> int:
    """The pairs of this process (all, or its shard of the whole list: names are decided on the whole list
    first), less those already done with ``--skip-existing``, through ``work``; one shared log."""
    _check_out_dir(args.out_dir)
    shard = args.shard or launcher_shard() or Shard()
    jobs = shard.take(_jobs(args, _extras(args)))
    prefix = f"[{shard.label}] " if shard.count > 1 else ""
    if args.skip_existing:
        finished = [_finished(args, job) for job in jobs]
        done = [job for job, over in zip(jobs, finished) if over]
        jobs = [job for job, over in zip(jobs, finished) if not over]
        if done:
            print(f"{prefix}{len(done)} pairs already done in {args.out_dir}: skipped", file=sys.stdout)
    _refuse_existing_outputs(args, jobs)
    _check_jobs(args, jobs)
    actions = AppCallbacks(_runtime(args, shard).store)
    report = run_jobs(
        jobs, lambda job: work(actions, job), args.out_dir, fatal=(MissingWeightsError,), stdout=sys.stdout,
        stderr=sys.stderr, logged={"rank": shard.index} if shard.count > 1 else {},
    )
    summary = (f"{prefix}{report.done} of {len(jobs)} done, {report.failed} failed; "
               f"log: {args.out_dir / LOG_NAME}")
    if report.interrupted:
        print(f"interrupted: {summary}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if report.stopped is not None:
        summary += " (stopped early)"
    print(summary, file=sys.stderr if report.failed else sys.stdout)
    return EXIT_ERROR if report.failed else EXIT_OK


def _save_new(image: Image.Image, path: Path, overwrite: bool) -> None:
    """Write a PNG without replacing an existing file (unless ``overwrite``) or leaving a partial one."""
    try:
        file = path.open("wb" if overwrite else "xb")
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; {_OVERWRITE_HINT}") from None
    try:
        with file:
            image.save(file, format="PNG")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _generation(args: argparse.Namespace) -> int:
    """``tryon`` and ``pose-transfer``: one result image per pair."""

    def work(actions: AppCallbacks, job: Job) -> dict[str, Any]:
        generation = _generate(args, actions, job)
        outputs = _outputs(args, job)
        for image, out in zip(generation.images, outputs):
            _save_new(image, out, args.overwrite)
        record = {"output": str(outputs[0]), "seed": generation.seed, "size": list(generation.image.size)}
        if len(outputs) > 1:
            record.update(outputs=[str(out) for out in outputs], seeds=generation.seeds)
        notes = {"notes": generation.prepared.notes} if generation.prepared.notes else {}
        return {**record, "memory": generation.memory_level, **notes}

    return _run_batch(args, work)


def _trace(args: argparse.Namespace) -> int:
    return _run_batch(args, lambda actions, job: _write_trace(args, actions, job))


def _trace_points(args: argparse.Namespace, job: Job) -> list[tuple[float, float]]:
    """The ``--point`` values (default: the centre), checked against the result's size before sampling.

    The result has the framing of the person photo (try-on) or of the target-pose photo (pose transfer).
    """
    width, height = load_image(job.second if args.task == "pose-transfer" else job.first).size
    points = args.point or [((width - 1) / 2, (height - 1) / 2)]
    for x, y in points:
        if not (x < width and y < height):
            raise UsageError(
                f"point ({x:g}, {y:g}) lies outside the result image of {width}x{height} pixels; give X below "
                f"{width} and Y below {height}"
            )
    return points


def _write_trace(args: argparse.Namespace, actions: AppCallbacks, job: Job) -> dict[str, Any]:
    """Result, an overview (the default view: what the Leffa loss trains) and one panel per layer: heatmaps
    per point, ringed where the point takes from, flow, warp. ``trace.json`` has that point per input point
    (``peaks``, reference pixels of the model frame) and per layer (``layer_peaks``).

    Everything is drawn before the folder is written, so a failure leaves no partial trace behind.
    """
    points = _trace_points(args, job)
    generation = _generate(args, actions, job, record_attention=True)
    recorded = generation.trace
    height = generation.image.size[1]
    folder = _output(args, job)

    def panel(layer: str) -> tuple[np.ndarray, list[InspectorView]]:
        views = [actions.inspect(generation, point, layer) for point in points]
        images = [view.heatmap for view in views] + [views[0].flow, views[0].warped_reference]
        labels = [_takes_from(point, view) for point, view in zip(points, views)] + ["flow", "warped reference"]
        if layer == TRAINED:
            images = [view.marked_result for view in views] + images + [actions.legend(min(height, 128))]
            labels = [f"point ({x:.0f}, {y:.0f})" for x, y in points] + labels + ["flow legend"]
        return side_by_side(images, labels), views

    overview, default_views = panel(TRAINED)
    names = {f"{index:02d}.png": layer for index, layer in enumerate(recorded.layers)}
    layer_panels = {name: panel(layer) for name, layer in names.items()}
    images = {"result.png": generation.image, "overview.png": Image.fromarray(overview)}
    images.update({f"layers/{name}": Image.fromarray(drawn) for name, (drawn, _) in layer_panels.items()})
    summary = {
        "seed": generation.seed, "points": [list(p) for p in points], "timesteps": recorded.timesteps,
        "layers": names,
        "view": {"layers": recorded.default_view.layers, "timesteps": recorded.default_view.timesteps},
        "reference_size": [recorded.image_size[1], recorded.image_size[0]],
        "peaks": [_pixel(view.looked_at) for view in default_views],
        "layer_peaks": {names[name]: [_pixel(view.looked_at) for view in views] for name, (_, views) in layer_panels.items()},
        "spread": [str(view.spread) for view in default_views],
    }
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=args.overwrite)
    except FileExistsError:
        raise FileExistsError(f"{folder} already exists; {_OVERWRITE_HINT}") from None
    try:
        (folder / "layers").mkdir(exist_ok=True)
        for name, image in images.items():
            _save_new(image, folder / name, overwrite=True)
        (folder / "trace.json").write_text(json.dumps(summary, indent=2))
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return {"output": str(folder), "seed": generation.seed}


def _takes_from(point: tuple[float, float], view: InspectorView) -> str:
    x, y = view.looked_at
    return f"({point[0]:.0f}, {point[1]:.0f}) takes from ({x:.0f}, {y:.0f})"


def _pixel(point: tuple[float, float]) -> list[float]:
    return [round(point[0], 3), round(point[1], 3)]


# ---------------------------------------------------------------------------------------- arguments
def _task(text: str) -> str:
    if text not in TASKS:
        raise argparse.ArgumentTypeError(f"unknown task {text!r}; choose from {', '.join(TASKS)}")
    return text


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected X,Y in pixels of the result, got {text!r}") from error
    if not all(math.isfinite(value) and value >= 0 for value in (x, y)):
        raise argparse.ArgumentTypeError(f"X and Y must be finite pixel positions >= 0, got {text!r}")
    return x, y


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--ckpt-dir", type=Path, help="released weights (default: $LEFFA_CKPT_DIR or ./ckpts)")
    group.add_argument("--device", default="auto", choices=DEVICES)
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: fp16 on CUDA, else fp32")
    group.add_argument(
        "--memory", default="auto", choices=MEMORY_CHOICES,
        help="GPU memory level (default auto: the fastest that fits the free memory; see README)",
    )
    group.add_argument("--offload", action="store_true", help="same as --memory model_offload")
    group.add_argument("--no-download", action="store_true", help="fail rather than download missing weights")
    group.add_argument("--tiny", action="store_true", help="built-in demo model (needs --mask, --densepose)")
    speed = parser.add_argument_group("speed (each off by default: it may change results in the last bits)")
    speed.add_argument("--compile", action="store_true", help="torch.compile both UNets (first run: minutes)")
    speed.add_argument("--channels-last", action="store_true", help="UNet weights in channels-last layout")
    speed.add_argument("--sdpa-backend", default="auto", choices=list(SDPA_BACKENDS), help="attention kernel")
    speed.add_argument("--autocast", choices=list(AUTOCAST_DTYPES), help="UNets under autocast (bf16 on CPU)")
    speed.add_argument("--vae-tiling", action="store_true", help="tiled VAE: less memory for large images")


def _generation_options(parser: argparse.ArgumentParser, several: bool = True) -> None:
    """Sampling options; ``several``: also ``--num-images`` (``trace`` records one image)."""
    group = parser.add_argument_group("generation")
    if several:
        group.add_argument(
            "--num-images", type=int, default=1, choices=range(1, MAX_IMAGES + 1), metavar=f"{{1..{MAX_IMAGES}}}",
            help="images per pair in one batched pass, seeds SEED, SEED+1, ... (NAME.png, NAME_2.png, ...)",
        )
    group.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    group.add_argument("--guidance", type=float, default=2.5, help="guidance scale (default 2.5)")
    group.add_argument("--seed", type=int, default=-1, help="-1 (default) picks one at random; it is logged")
    group.add_argument("--ref-acceleration", action="store_true", help="run the reference UNet once (faster)")
    group.add_argument(
        "--resolution", default="full", choices=RESOLUTIONS, help="the model's size, or half of it for speed"
    )
    group.add_argument(
        "--auto-crop", default="auto", choices=AUTO_CROP_CHOICES,
        help="generate on the person cut from the photo (auto: when the person is small in the photo)",
    )


def _input_options(parser: argparse.ArgumentParser, first: str, second: str, extras: dict[str, str]) -> None:
    """Two positional inputs (files or folders) or ``--pairs``; ``extras`` are per-person files."""
    for dest, name in (("first", first), ("second", second)):
        parser.add_argument(dest, nargs="?", type=Path, metavar=name.upper(), help=f"{name} photo or folder")
    group = parser.add_argument_group("batch")
    columns = " ".join([first, second, *(f"[{name}]" for name in extras)])
    group.add_argument(
        "--pairs", type=Path,
        help=f"text file, one pair per line: {columns} ('-' = none; quote paths with spaces: \"my photo.jpg\")",
    )
    group.add_argument("--root", type=Path, help="folder of the pairs file's paths (default: the file's own)")
    group.add_argument("-o", "--out-dir", type=Path, help="results and log.jsonl (default: outputs/COMMAND)")
    group.add_argument(
        "--overwrite", action="store_true", help="replace results already in the output folder (default: refuse)"
    )
    group.add_argument(
        "--skip-existing", action="store_true",
        help="leave out pairs whose results are already in the output folder (resume an interrupted run)",
    )
    group.add_argument(
        "--shard", type=parse_shard, metavar="I/N",
        help="process every N-th pair from the I-th (0-based); under torchrun or accelerate launch the "
        "processes split the pairs by themselves",
    )
    for name, text in extras.items():
        help_text = f"{text}: one file, or a folder of them named as the persons"
        group.add_argument(f"--{name}", type=Path, help=help_text)


def _tryon_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("try-on")
    group.add_argument("--model-type", default="viton_hd", choices=list(TRYON_MODEL_TYPES))
    group.add_argument("--category", default="upper_body", choices=list(CATEGORIES))
    group.add_argument("--prepare-garment-png", action="store_true", help="centre a cut-out PNG on white")
    group.add_argument("--repaint", action="store_true", help="keep all outside the mask as photographed")
    mask = parser.add_argument_group("mask adjustments (pixels of the model frame; README: Mask adjustments)")
    mask.add_argument("--grow", type=int, default=0, metavar="PX", help="grow the mask (negative: shrink)")
    for side, use in (("up", "a higher neckline"), ("down", "a longer garment"), ("left", "a wider cut"),
                      ("right", "a wider cut")):
        mask.add_argument(f"--extend-{side}", type=int, default=0, metavar="PX", help=f"stretch it {side} ({use})")
    mask.add_argument("--no-keep-hands", dest="keep_hands", action="store_false", help="adjustments may cover hands")
    mask.add_argument("--no-keep-face", dest="keep_face", action="store_false",
                      help="adjustments may cover face and hair")
    mask.add_argument("--cover-legs", action="store_true", help="lower body and dresses: legs to the ankles")


def _adjustments(args: argparse.Namespace) -> MaskAdjustments:
    return MaskAdjustments(
        grow=args.grow, extend_up=args.extend_up, extend_down=args.extend_down, extend_left=args.extend_left,
        extend_right=args.extend_right, keep_hands=args.keep_hands, keep_face=args.keep_face,
        cover_legs=args.cover_legs,
    )


def _add_convert(commands) -> None:
    convert = commands.add_parser(
        "convert",
        help="check a released .pth and write a .safetensors copy (optionally fp16)",
        description="Check a checkpoint against its base model strictly and write a copy for faster loads.",
    )
    convert.add_argument("input", help="released .pth (or .safetensors) checkpoint")
    convert.add_argument("output", help="output path ending in .safetensors (or .pth)")
    convert.add_argument("--fp16", action="store_true", help="store floating point tensors as float16")
    convert.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")
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
    _generation_options(trace, several=False)
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
    if args.overwrite and args.skip_existing:
        parser.error(f"{args.command}: --overwrite replaces results, --skip-existing keeps them: choose one")
    if args.pairs is not None and (args.first is not None or args.second is not None):
        parser.error(f"{args.command}: give either two inputs or --pairs, not both")
    if args.pairs is None and (args.first is None or args.second is None):
        parser.error(f"{args.command}: give two inputs (files or folders) or --pairs FILE")
    if args.pairs is not None and (getattr(args, "mask", None) or args.densepose):
        parser.error(f"{args.command}: with --pairs, put masks and DensePose in the pairs file's columns")
    if args.task == "pose-transfer" and getattr(args, "mask", None) is not None:
        parser.error(f"{args.command}: --mask is for try-on; pose transfer takes --densepose only")
    try:
        _settings(args)
    except ValueError as error:
        parser.error(f"{args.command}: {error}")
    if args.tiny and args.pairs is None:
        missing = [f"--{name}" for name in _extras(args) if getattr(args, name, None) is None]
        if missing:
            parser.error(f"{args.command}: {_TINY_EXTRAS}: give {' and '.join(missing)}")
    args.out_dir = args.out_dir or _DEFAULT_OUT / args.command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing more was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
