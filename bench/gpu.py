"""One prepared GPU benchmark: the CUDA test lane, SD1.5 try-on and SDXL pose transfer at 1024×768, the
stock-UNet floor, every speed option, VAE tiling/slicing, every memory level (the README's "GPU memory
needed" table), DensePose and human parsing.

Usage: ``python -m bench.gpu`` (or ``make bench-gpu``) on a CUDA machine; about 6–8 minutes on one
H100/H200, writing ``bench/RESULTS-gpu.md`` after every section (a run cut short keeps what it measured;
an existing results file is kept under a timestamped name). ``--quick`` runs every section end to end
with the tiny config at tiny sizes on whatever device there is (the CPU here), to check the script.

All weights are random (nothing is downloaded): the models are built on the meta device, materialised on
the GPU and filled with scaled normal noise, which takes seconds even for SDXL. Each section runs in its
own ``try`` block and is skipped, with a note, when the time budget (``--budget``) would be exceeded.

On the lent GPU machines diffusers (and importlib_metadata) are not installed and nothing can be
downloaded there: carry them as wheels (``/work/.library/device/README.md``), e.g.
``pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
importlib_metadata``, then run ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl &&
PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 -m bench.gpu``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from bench.bench_exactness import Inputs, bf16_parts, ours_parts, released_parts, run_step
from bench.common import sync, timed
from bench.memory_table import MEASUREMENT, render, update_readme
from bench.released import ReleasedStep
from leffa.core.configs import load_base_configs
from leffa.core.memory import LASTING_LEVELS, MEMORY_LEVELS, apply_memory_level, remove_memory_level
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.speed import SpeedOptions, apply_speed_options

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "RESULTS-gpu.md"
QUICK_OUT = REPO / "outputs" / "RESULTS-gpu-quick.md"
TARGETS = (
    "try-on ≤ 3 s per image, Leffa step ≤ 1.3× the stock UNet forward (batch 2), ≤ 6 GB peak (SD1.5 fp16), "
    "≤ 3.5 GB with group offloading at ≤ 1.5× the time"
)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the real ones, or tiny ones for ``--quick``."""

    device: torch.device
    tryon_base: str
    pose_base: str
    height: int
    width: int
    steps: int
    dtypes: tuple[str, ...]
    repeats: int
    large: tuple[int, int]  # (height, width) of the VAE tiling test
    parsing_side: tuple[int, int]  # ATR and LIP input sides
    quick: bool

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            dtypes = ("fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16")
            return cls(device, "tiny", "tiny", 128, 96, 2, dtypes, 2, (256, 192), (64, 59), True)
        return cls(torch.device("cuda"), "sd15-inpainting", "sdxl-inpainting", 1024, 768, 30, ("fp16", "bf16"), 10,
                   (2048, 1536), (512, 473), False)

    def dtype(self, name: str) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


@dataclass
class Report:
    """Markdown sections, rewritten to ``path`` after each one so partial results survive."""

    path: Path
    header: list[str]
    sections: list[str] = field(default_factory=list)

    def add(self, title: str, lines: list[str]) -> None:
        self.sections.append("\n".join([f"## {title}", "", *lines, ""]))
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.header + [""] + self.sections))


def table(header: list[str], rows: list[list]) -> list[str]:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


# ------------------------------------------------------------------------------------------ helpers
def median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | str:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else "–"


@torch.no_grad()
def fill_random(module: torch.nn.Module, seed: int = 0) -> None:
    """Scaled normal weights (std 1/sqrt(fan-in)), unit norm scales, zero biases: activations stay O(1)."""
    gen = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()), generator=gen)
        else:
            param.fill_(1.0 if name.endswith("weight") else 0.0)


def random_model(base: str, device: torch.device, dtype: torch.dtype) -> LeffaModel:
    """A LeffaModel of ``base``'s size with random weights, built without a CPU-side random init."""
    model = LeffaModel.from_base(base, device="meta")
    model.to_empty(device=device)
    fill_random(model)
    return model.place(device, dtype).eval()


def random_stock_unet(base: str, device: torch.device, dtype: torch.dtype) -> UNet2DConditionModel:
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_base_configs(base).unet)
    unet.to_empty(device=device)
    fill_random(unet)
    return unet.to(dtype).eval()


def image_inputs(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    src, ref, dense = (torch.rand(1, 3, height, width, generator=gen) * 2 - 1 for _ in range(3))
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 4 : 3 * height // 4, width // 6 : 5 * width // 6] = 1
    return src, ref, mask, dense


@dataclass
class Timing:
    seconds: float
    step_seconds: float
    peak: float | str


def warm_up(model: LeffaModel, inputs, **kwargs) -> None:
    """One single-step run on a throwaway pipeline: kernels, handles and allocator warm, the cache untouched."""
    LeffaPipeline(model)(*inputs, num_inference_steps=1, seed=0, output_type="pt", **kwargs)


def generate(pipe: LeffaPipeline, plan: Plan, inputs, **kwargs) -> Timing:
    """One image; seconds per step are the median interval between step callbacks."""
    stamps: list[float] = []

    def on_step(index: int, total: int, timestep: int) -> None:
        sync(plan.device)
        stamps.append(time.perf_counter())

    reset_peak(plan.device)
    seconds = timed(
        lambda: pipe(*inputs, num_inference_steps=plan.steps, seed=0, output_type="pt", callback=on_step, **kwargs),
        plan.device,
    )
    steps = [b - a for a, b in zip(stamps, stamps[1:])] or [seconds / plan.steps]
    return Timing(seconds, statistics.median(steps), peak_gib(plan.device))


def release() -> None:
    """Give memory back after the caller dropped its references."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------- sections
def section_environment(plan: Plan) -> list[str]:
    import diffusers
    import onnxruntime

    lines = [
        f"- machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads",
        f"- torch {torch.__version__}, diffusers {diffusers.__version__}, onnxruntime {onnxruntime.__version__} "
        f"(providers: {', '.join(onnxruntime.get_available_providers())})",
    ]
    if plan.device.type == "cuda":
        props = torch.cuda.get_device_properties(plan.device)
        lines.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}")
    return lines


def section_test_lane(plan: Plan) -> list[str]:
    """The device-parametrised tests (CUDA cases included where there is CUDA)."""
    paths = ["tests/test_devices.py", "tests/test_speed.py", "tests/test_bench.py"]
    selection = ["-k", "rescale_noise_cfg"] if plan.quick else []
    command = [sys.executable, "-m", "pytest", *paths, *selection, "-q", "-rfEs", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    tail = (result.stdout + result.stderr).strip().splitlines() or ["(no output)"]
    summary = [line for line in tail if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    return [f"`{' '.join(command[2:])}` → exit {result.returncode}", "", "```", *summary[-40:], tail[-1], "```"]


def section_tryon(plan: Plan) -> list[str]:
    rows = []
    inputs = image_inputs(plan.height, plan.width)
    for name in plan.dtypes:
        model = random_model(plan.tryon_base, plan.device, plan.dtype(name))
        warm_up(model, inputs)
        pipe = LeffaPipeline(model)
        for label, kwargs in (("cache cold", {}), ("cache warm", {}), ("reference acceleration, warm", {"ref_acceleration": True})):
            result = generate(pipe, plan, inputs, **kwargs)
            rows.append([name, label, result.seconds, result.step_seconds, result.peak])
            print(f"  try-on {name} {label}: {result.seconds:.2f} s", flush=True)
        pipe = model = None
        release()
    header = ["dtype", "run", "s / image", "s / step (median)", "peak GiB"]
    return [f"{plan.tryon_base}, {plan.width}×{plan.height}, {plan.steps} steps, guidance 2.5 (batch 2), "
            "random weights; after a one-step warm-up run, the first call of a new pipeline = cache cold (the "
            "unconditional features of each timestep computed), later calls = cache warm.", "", *table(header, rows)]


def section_floor(plan: Plan) -> list[str]:
    """Leffa step vs a stock SD-inpainting UNet forward at the same batch and resolution."""
    rows = []
    factor = 8
    hw = (plan.height // factor, plan.width // factor)
    config = load_base_configs(plan.tryon_base).unet
    for name in plan.dtypes:
        dtype = plan.dtype(name)
        stock = random_stock_unet(plan.tryon_base, plan.device, dtype)
        sample = torch.randn(2, config["in_channels"], *hw, device=plan.device, dtype=dtype)
        text = torch.randn(2, 77, config["cross_attention_dim"], device=plan.device, dtype=dtype)
        t = torch.tensor(500, device=plan.device)
        with torch.no_grad():
            stock_s = median_time(lambda: stock(sample, t, encoder_hidden_states=text), plan.device, plan.repeats)
        stock = None
        release()
        model = random_model(plan.tryon_base, plan.device, dtype)
        inputs = Inputs.random(hw, plan.device)
        ours, released = ours_parts(model, inputs), released_parts(ReleasedStep(model), inputs)
        with torch.no_grad():
            variants = {
                "Leffa step (uncond. features cached)": lambda: run_step(ours),
                "Leffa step, reference acceleration": ours["generative"],
                "released per-step work (re-created)": lambda: run_step(released),
            }
            rows.append([name, "stock UNet forward (9 ch, text cross-attn)", stock_s, 1.0])
            for label, fn in variants.items():
                seconds = median_time(fn, plan.device, plan.repeats)
                rows.append([name, label, seconds, seconds / stock_s])
        model = ours = released = variants = None
        release()
    return [f"{plan.tryon_base} at {plan.width}×{plan.height}, batch 2, median of {plan.repeats}.", "",
            *table(["dtype", "forward", "s", "ratio to stock"], rows)]


def section_speed_options(plan: Plan) -> list[str]:
    """Each option on a fresh model with the same weights: step time and its change to the noise."""
    name = plan.dtypes[0]
    dtype = plan.dtype(name)
    hw = (plan.height // 8, plan.width // 8)
    inputs = Inputs.random(hw, plan.device)
    options = {
        "default": SpeedOptions(),
        "channels-last": SpeedOptions(channels_last=True),
        "SDPA flash": SpeedOptions(sdpa_backend="flash"),
        "SDPA efficient": SpeedOptions(sdpa_backend="efficient"),
        "SDPA cudnn": SpeedOptions(sdpa_backend="cudnn"),
        "SDPA math": SpeedOptions(sdpa_backend="math"),
        "channels-last + SDPA flash": SpeedOptions(channels_last=True, sdpa_backend="flash"),
    }
    if plan.device.type != "cuda":
        options = {k: v for k, v in options.items() if "efficient" not in k and "cudnn" not in k}
    rows, baseline = [], None
    for label, option in options.items():
        try:
            model = apply_speed_options(random_model(plan.tryon_base, plan.device, dtype), option)
            parts = ours_parts(model, inputs)
            seconds = median_time(lambda: run_step(parts), plan.device, plan.repeats)
            _, noise = run_step(parts)
            noise = noise.float().cpu()
            baseline = noise if baseline is None else baseline
            rows.append([label, seconds, (noise - baseline).abs().max().item()])
        except Exception as error:  # one option failing must not hide the others
            rows.append([label, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}", ""])
        model = parts = None
        release()
    return [f"{plan.tryon_base} {name}, {plan.width}×{plan.height}, one Leffa step (batch 2, cached uncond. "
            f"features), median of {plan.repeats}; difference = max |noise − default noise|.", "",
            *table(["option", "s / step", "max abs difference"], rows)]


def section_compile(plan: Plan) -> list[str]:
    name = plan.dtypes[0]
    hw = (plan.height // 8, plan.width // 8)
    inputs = Inputs.random(hw, plan.device)
    plain = random_model(plan.tryon_base, plan.device, plan.dtype(name))
    parts = ours_parts(plain, inputs)
    plain_s = median_time(lambda: run_step(parts), plan.device, plan.repeats)
    _, expected = run_step(parts)
    plain = parts = None
    release()
    torch._dynamo.reset()
    model = apply_speed_options(random_model(plan.tryon_base, plan.device, plan.dtype(name)), SpeedOptions(compile=True))
    parts = ours_parts(model, inputs)
    first = timed(lambda: run_step(parts), plan.device)
    seconds = median_time(lambda: run_step(parts), plan.device, plan.repeats)
    _, noise = run_step(parts)
    difference = (noise.float() - expected.float()).abs().max().item()
    model = parts = None
    release()
    return [f"torch.compile (inductor, default mode) of both UNets, {plan.tryon_base} {name}, one Leffa step.", "",
            *table(["run", "s"], [["first call (compiles)", first], ["step, eager", plain_s],
                                  ["step, compiled", seconds], ["speed-up", plain_s / seconds],
                                  ["max abs difference", difference]])]


def section_vae(plan: Plan) -> list[str]:
    name = plan.dtypes[0]
    model = random_model(plan.tryon_base, plan.device, plan.dtype(name))
    vae = model.vae
    height, width = plan.large
    large = torch.randn(1, 4, height // 8, width // 8, device=plan.device)
    batch = torch.randn(4, 4, plan.height // 8, plan.width // 8, device=plan.device)
    rows = []
    for label, latents, switch in (("decode 1 image", large, "tiling"), ("decode 4 images", batch, "slicing")):
        for enabled in (False, True):
            getattr(vae, f"{'enable' if enabled else 'disable'}_{switch}")()
            reset_peak(plan.device)
            with torch.no_grad():
                seconds = median_time(lambda: model.decode_latents(latents), plan.device, 2)
            size = f"{latents.shape[-1] * 8}×{latents.shape[-2] * 8}"
            rows.append([f"{label} {size}", f"{switch} {'on' if enabled else 'off'}", seconds, peak_gib(plan.device)])
        getattr(vae, f"disable_{switch}")()
    dtype = str(vae.dtype).removeprefix("torch.")
    model = vae = None
    release()
    return [f"VAE decode, {plan.tryon_base} VAE in {dtype}.", "", *table(["work", "option", "s", "peak GiB"], rows)]


def _level_model(base: str, plan: Plan, level: str, reuse: LeffaModel | None) -> LeffaModel:
    """A model of ``base`` at ``level`` for the GPU: ``reuse`` when its level can be left in place (a lasting
    level changes the weights, so it gets a fresh model)."""
    if reuse is not None and level not in LASTING_LEVELS:
        remove_memory_level(reuse)
        model = reuse
    else:
        model = random_model(base, plan.device, plan.dtype(plan.dtypes[0]))
    apply_memory_level(model, level, plan.device)
    return model


def memory_rows(plan: Plan, task: str, base: str, counts: tuple[int, ...] = (1, 4)) -> list[dict]:
    """Per memory level and ``num_images``: peak GPU memory and seconds per image at ``plan``'s size."""
    inputs = image_inputs(plan.height, plan.width, seed=2)
    options = {"densepose_format": "iuv"} if task == "pose" else {}
    rows, model = [], None
    for level in MEMORY_LEVELS:
        try:
            model = _level_model(base, plan, level, model)
            pipe = LeffaPipeline(model)
            pipe(*inputs, num_inference_steps=1, seed=0, output_type="pt", **options)  # warm-up
            for count in counts:
                reset_peak(plan.device)
                seconds = timed(lambda: pipe(*inputs, num_inference_steps=plan.steps, seed=0, num_images=count,
                                             output_type="pt", **options), plan.device)
                rows.append(dict(task=task, level=level, num_images=count, seconds_per_image=seconds / count,
                                 peak_gib=peak_gib(plan.device)))
                print(f"  {task} {level} x{count}: {seconds / count:.2f} s / image, {rows[-1]['peak_gib']} GiB", flush=True)
        except Exception as error:  # one level failing must not hide the others
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            rows += [dict(task=task, level=level, num_images=count, error=message) for count in counts]
            model = None
        pipe = None
        if model is not None and model.memory_level in LASTING_LEVELS:
            model = None
        release()
    return rows


def section_memory(plan: Plan) -> list[str]:
    """Every memory level (``--memory``) for try-on and pose transfer, 1 and 4 images; the rows go to
    ``bench/gpu-memory.json`` and the README's table (``bench.memory_table``), --quick rows to outputs/."""
    rows = memory_rows(plan, "tryon", plan.tryon_base) + memory_rows(plan, "pose", plan.pose_base)
    gpu = torch.cuda.get_device_properties(plan.device).name if plan.device.type == "cuda" else "the CPU (--quick)"
    measurement = dict(gpu=gpu, date=f"{datetime.now():%Y-%m-%d}", width=plan.width, height=plan.height,
                       steps=plan.steps, dtype=plan.dtypes[0], rows=rows)
    path = QUICK_OUT.with_name("gpu-memory-quick.json") if plan.quick else MEASUREMENT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(measurement, indent=1) + "\n")
    if not plan.quick:
        update_readme(measurement)
    return [f"Rows saved to `{path.relative_to(REPO) if path.is_relative_to(REPO) else path}`"
            f"{'' if plan.quick else ' and the README table'}.", "", render(measurement)]


def section_pose(plan: Plan) -> list[str]:
    rows = []
    inputs = image_inputs(plan.height, plan.width, seed=1)
    model = random_model(plan.pose_base, plan.device, plan.dtype(plan.dtypes[0]))
    warm_up(model, inputs)
    pipe = LeffaPipeline(model)
    for label, kwargs in (("cache cold", {}), ("cache warm", {}), ("reference acceleration, warm", {"ref_acceleration": True})):
        result = generate(pipe, plan, inputs, densepose_format="iuv", **kwargs)
        rows.append([label, result.seconds, result.step_seconds, result.peak])
        print(f"  pose {label}: {result.seconds:.2f} s", flush=True)
    pipe = model = None
    release()
    return [f"{plan.pose_base}, {plan.dtypes[0]} (VAE as its config asks), {plan.width}×{plan.height}, "
            f"{plan.steps} steps, random weights.", "", *table(["run", "s / image", "s / step", "peak GiB"], rows)]


def section_densepose(plan: Plan) -> list[str]:
    from preprocess.densepose import DensePoseModel, DensePoseRCNN, DensePoseSettings

    torch.manual_seed(0)
    network = DensePoseRCNN().eval()
    with torch.no_grad():  # every proposal a person: the charts' cost is included
        network.roi_heads.box_predictor.cls_score.weight.zero_()
        network.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([4.0, 0.0]))
    image = np.random.default_rng(0).integers(0, 256, (plan.height, plan.width, 3), dtype=np.uint8)
    rows = []
    small = {"shortest_edge": 128, "max_size": 192} if plan.quick else {}
    settings = DensePoseSettings(detections_per_image=1, **small)  # the best person only, as try-on uses
    for name in dict.fromkeys(("fp32", plan.dtypes[0] if plan.device.type == "cuda" else "fp32")):
        model = DensePoseModel(network, settings).to(plan.device, plan.dtype(name))
        reset_peak(plan.device)
        seconds = median_time(lambda: model.predict(image), plan.device, min(plan.repeats, 5))
        rows.append([name, seconds, peak_gib(plan.device), model.predict(image).num_people])
    network = model = None
    release()
    return [f"DensePose R50-FPN, random weights biased to call every proposal a person (best one kept), one "
            f"{plan.width}×{plan.height} image (resized to shortest edge {settings.shortest_edge} inside), median.", "", *table(["dtype", "s / image", "peak GiB", "people"], rows)]


class _StandInParser(torch.nn.Module):
    """SCHP-sized stand-in: a ResNet-101 trunk at output stride 8, class logits upsampled to stride 4."""

    def __init__(self, classes: int, tiny: bool) -> None:
        super().__init__()
        from torchvision.models import resnet18, resnet101

        trunk = (resnet18 if tiny else resnet101)(weights=None, replace_stride_with_dilation=[False, True, True] if not tiny else None)
        self.body = torch.nn.Sequential(*list(trunk.children())[:-2])
        self.head = torch.nn.Conv2d(trunk.fc.in_features, classes, 1)

    def forward(self, x: torch.Tensor):
        logits = self.head(self.body(x))
        logits = torch.nn.functional.interpolate(logits, size=(x.shape[2] // 4, x.shape[3] // 4), mode="bilinear")
        return logits[:, :1], logits


def section_parsing(plan: Plan) -> list[str]:
    import warnings

    import onnxruntime as ort
    from PIL import Image

    from preprocess.parsing import ATR_LABELS, LIP_NUM_CLASSES, HumanParser

    folder = Path(tempfile.mkdtemp(prefix="leffa-bench-parsing-"))
    paths = []
    for classes, side, file in ((len(ATR_LABELS), plan.parsing_side[0], "atr.onnx"), (LIP_NUM_CLASSES, plan.parsing_side[1], "lip.onnx")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_StandInParser(classes, plan.quick).eval(), (torch.zeros(1, 3, side, side),),
                              str(folder / file), input_names=["input.1"], dynamo=False)
        paths.append(folder / file)
    person = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 768, 3), dtype=np.uint8))
    rows = []
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    for device in devices:
        parser = HumanParser(*paths, device=device)
        seconds = median_time(lambda: parser(person), torch.device("cpu"), 3)
        rows.append([device, seconds])
    note = "" if "cuda" in devices else (" onnxruntime here has no CUDA provider (the `onnxruntime-gpu` package "
                                         "would add it), so parsing runs on the CPU.")
    return [f"SCHP ATR + LIP through onnxruntime with stand-in networks of SCHP's size (ResNet-101, output "
            f"stride 8, random weights), one photo.{note}", "", *table(["device", "s / photo (ATR + LIP)"], rows)]


def section_cpu_autocast(plan: Plan) -> list[str]:
    """The ``autocast="bf16"`` option on this machine's CPU: speed and difference against fp32."""
    height, width = (plan.height, plan.width) if plan.quick else (512, 384)
    inputs = Inputs.random((height // 8, width // 8))
    model = random_model(plan.tryon_base, plan.device, torch.float32).to("cpu")
    fp32 = ours_parts(model, inputs)
    bf16 = bf16_parts(fp32)
    cpu = torch.device("cpu")
    rows, outputs = [], {}
    for label, parts in (("fp32", fp32), ("bf16 autocast", bf16)):
        seconds = median_time(lambda: run_step(parts), cpu, 2)
        outputs[label] = run_step(parts)[1].float()
        rows.append([label, seconds])
    difference = ((outputs["bf16 autocast"] - outputs["fp32"]).norm() / outputs["fp32"].norm()).item()
    model = fp32 = bf16 = None
    release()
    return [f"{plan.tryon_base} at {width}×{height} on the CPU ({torch.get_num_threads()} threads), one Leffa step "
            f"(batch 2, cached uncond. features), median of 2; bf16 vs fp32 noise: relative L2 {difference:.2e}.", "",
            *table(["compute", "s / step"], rows)]


SECTIONS: list[tuple[str, Callable[[Plan], list[str]], float]] = [
    # (title, function, estimated seconds on an H100/H200)
    ("Environment", section_environment, 5),
    ("SD1.5 virtual try-on", section_tryon, 60),
    ("Leffa step against the stock UNet floor", section_floor, 40),
    ("SDXL pose transfer", section_pose, 60),
    ("DensePose on the device", section_densepose, 20),
    ("CUDA test lane", section_test_lane, 90),
    ("Speed options", section_speed_options, 45),
    ("VAE tiling and slicing", section_vae, 20),
    ("Memory levels", section_memory, 300),
    ("Human parsing", section_parsing, 40),
    ("CPU bf16 autocast", section_cpu_autocast, 60),
    ("torch.compile", section_compile, 150),
]


def output_path(requested: Path | None, quick: bool) -> Path:
    """Where to write; an existing file is kept under a timestamped name, never overwritten."""
    path = requested or (QUICK_OUT if quick else DEFAULT_OUT)
    if path.exists():
        stamp = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
        path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs and sizes on any device (a smoke test)")
    parser.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--budget", type=float, default=480, help="seconds; sections that would overrun are skipped")
    parser.add_argument("--only", nargs="*", help="run only the sections whose titles contain these words")
    args = parser.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        print("error: no CUDA device here; run on a GPU machine, or use --quick for a smoke test", file=sys.stderr)
        return 2
    plan = Plan.make(args.quick)
    start = time.perf_counter()
    report = Report(output_path(args.out, args.quick), [
        "# GPU benchmark results (`bench/gpu.py`)", "",
        f"Run {datetime.now():%Y-%m-%d %H:%M}{' in --quick mode (tiny sizes: not a measurement)' if args.quick else ''}. "
        f"Targets: {TARGETS}.",
    ])
    report.write()
    sections = [s for s in SECTIONS if not args.only or any(word.lower() in s[0].lower() for word in args.only)]
    failed = False
    for title, run, estimate in sections:
        left = args.budget - (time.perf_counter() - start)
        if not args.quick and left < estimate:
            report.add(title, [f"skipped: {left:.0f} s of the budget left, the section needs about {estimate:.0f} s"])
            continue
        print(f"[{time.perf_counter() - start:6.1f} s] {title} ...", flush=True)
        section_start = time.perf_counter()
        try:
            lines = run(plan)
        except Exception:
            failed = True
            lines = ["failed:", "", "```", *traceback.format_exc().strip().splitlines()[-12:], "```"]
        report.add(title, lines + ["", f"_section time {time.perf_counter() - section_start:.1f} s_"])
        print("\n".join(lines), flush=True)
    print(f"wrote {report.path} in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
