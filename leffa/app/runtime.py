"""Which models serve the app and the command line: the released weights, or the built-in demo model.

The demo model (``leffa.app.demo``, selected with ``--tiny``) needs no download and runs anywhere in seconds.
Its example inputs carry their own mask and DensePose, because the preprocessing models (human parsing,
OpenPose, DensePose) come with the released weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants as hub_constants

from leffa.app.batch import images_in
from leffa.weights import FILES, MissingWeightsError, ensure_files, resolve_ckpt_dir
from leffa.app.demo import load_demo_model, pose_transfer_trained
from leffa.assets import DEMO_IMAGE_SIZE, DEMO_MODEL_DIR, EXAMPLES_DIR
from leffa.app.examples import (
    PoseExample, TryOnExample, crossed, demo_example_files, poses_of, project_poses,
)
from leffa.app.models import POSE_MODEL, POSE_TASK, RELEASED_MODELS, TRYON_TASK, served_at
from leffa.app.service import ModelStore
from leffa.common import resolve_device
from leffa.core.memory import check_memory_choice
from leffa.core.model import LeffaModel
from leffa.core.speed import SpeedOptions, apply_speed_options

#: Device choices offered by the app and the command line.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
#: ``auto`` picks fp16 on CUDA (as the released demo runs) and fp32 elsewhere.
DTYPES: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
_MAX_AUTHOR_EXAMPLES = 6
#: Where the demo models' weights are, per task (the registry entries of a single-model runtime name them).
DEMO_WEIGHTS = {TRYON_TASK: DEMO_MODEL_DIR / TRYON_TASK, POSE_TASK: DEMO_MODEL_DIR / POSE_TASK}


@dataclass
class Runtime:
    """The model store plus what the user should see about it (examples, missing weights, and the tasks
    whose model has not been trained for them, e.g. pose transfer on the built-in try-on model), and the
    memory level the page offers first."""

    store: ModelStore
    tiny: bool
    tryon_examples: list[TryOnExample]
    pose_examples: list[PoseExample]
    notice: str = ""
    untrained: frozenset[str] = field(default_factory=frozenset)
    #: The memory level the page offers first (``--memory``; :mod:`leffa.core.memory`).
    memory: str = "auto"


def pick_dtype(dtype: str, device: str) -> str:
    """Resolve ``auto`` to fp16 on CUDA and fp32 elsewhere; other names pass through."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    return "fp16" if resolve_device(device).type == "cuda" else "fp32"


def memory_choice(memory: str, offload: bool = False) -> str:
    """The memory level asked for by ``--memory`` and its older alias ``--offload`` (= ``model_offload``);
    a ``ValueError`` when the two disagree."""
    check_memory_choice(memory)
    if not offload:
        return memory
    if memory not in ("auto", "model_offload"):
        raise ValueError(f"--offload means --memory model_offload, but --memory {memory} was given too: pass one")
    return "model_offload"


def missing_weights(task: str, ckpt_dir: str | Path | None) -> str | None:
    """What is missing for ``task`` and how to fetch it, or ``None`` when everything is there."""
    try:
        ensure_files(task, ckpt_dir, download=False)
    except MissingWeightsError as error:
        return str(error)
    return None


def downloads_possible(download: bool) -> bool:
    """Whether missing weights can be fetched: allowed by the user and the hub not set offline."""
    return download and not hub_constants.HF_HUB_OFFLINE


def single_model_runtime(
    model: LeffaModel,
    size: tuple[int, int],
    examples: list[TryOnExample],
    notice: str = "",
    untrained: frozenset[str] = frozenset({POSE_MODEL}),
    pose_model: LeffaModel | None = None,
    pose_examples: list[PoseExample] | None = None,
) -> Runtime:
    """One small model serving every task at ``size`` (width, height), or ``pose_model`` serving pose
    transfer when given. Try-on examples are crossed (each person with another one's garment); without
    ``pose_examples`` the pose examples pair the try-on persons; ``untrained`` names the tasks the serving
    model has not learnt."""
    loaded = {key: model for key in RELEASED_MODELS}
    if pose_model is not None:
        loaded[POSE_MODEL] = pose_model
    store = ModelStore(
        None, models=served_at(RELEASED_MODELS, size, "demo", weights=DEMO_WEIGHTS), device=model.device,
        dtype=model.dtype, loaded=loaded, preprocessing=False,
    )
    poses = poses_of(examples) if pose_examples is None else pose_examples
    return Runtime(store, True, crossed(examples), poses, notice, frozenset(untrained))


def tiny_runtime(
    *, device: str = "auto", dtype: str = "auto", notice: str = "", speed: SpeedOptions | None = None,
    memory: str = "auto",
) -> Runtime:
    """The built-in demo model (``leffa.app.demo``) serving every task, with the shipped example inputs;
    ``memory`` is the level the page offers first."""
    model = load_demo_model(device, pick_dtype(dtype, device))
    trained = pose_transfer_trained()
    pose_model = load_demo_model(device, pick_dtype(dtype, device), task=POSE_MODEL) if trained else None
    if speed is not None:
        for each in filter(None, (model, pose_model)):
            apply_speed_options(each, speed)
    height, width = DEMO_IMAGE_SIZE
    untrained = frozenset() if trained else frozenset({POSE_MODEL})
    examples = demo_example_files(EXAMPLES_DIR)
    poses = project_poses(EXAMPLES_DIR, examples)
    runtime = single_model_runtime(model, (width, height), examples, notice, untrained, pose_model, poses)
    runtime.memory = check_memory_choice(memory)
    return runtime


def released_runtime(
    ckpt_dir: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    download: bool = True,
    speed: SpeedOptions | None = None,
    memory: str = "auto",
) -> Runtime:
    """The released weights from ``ckpt_dir``, loaded lazily (and downloaded on first use if allowed).

    ``speed`` (see :mod:`leffa.core.speed`) is applied to each Leffa model as it loads; ``memory`` is the
    level the page offers first (each call names its own: ``SamplingSettings.memory``).
    """
    root = resolve_ckpt_dir(ckpt_dir)
    store = ModelStore(
        root, device=device, dtype=pick_dtype(dtype, device), download=downloads_possible(download), speed=speed,
    )
    missing = missing_weights("virtual_tryon", root)
    notice = ""
    if missing is not None:
        notice = (
            "The try-on weights are not there yet; they are downloaded on first use.\n" + missing
            if store.download
            else missing
        )
    folders = (root / FILES[name] for name in ("examples_person1", "examples_person2", "examples_garment"))
    persons1, persons2, garments = (images_in(folder) if folder.is_dir() else [] for folder in folders)
    project = demo_example_files(EXAMPLES_DIR) if EXAMPLES_DIR.is_dir() else []
    tryon = [TryOnExample(p, g) for p, g in zip(persons1, garments)][:_MAX_AUTHOR_EXAMPLES]
    poses = [PoseExample(a, b) for a, b in zip(persons2, persons2[1:])][:_MAX_AUTHOR_EXAMPLES]
    # The project's DensePose renders are in the demo models' format, not the released models': drop them, so
    # the released DensePose model computes its own from the photo (the masks are format-free and stay).
    project_tryon = [TryOnExample(e.person, e.garment, e.mask) for e in crossed(project)]
    project_pose_pairs = [PoseExample(e.person, e.target) for e in project_poses(EXAMPLES_DIR, project)]
    return Runtime(store, False, project_tryon + tryon, project_pose_pairs + poses, notice, memory=check_memory_choice(memory))

