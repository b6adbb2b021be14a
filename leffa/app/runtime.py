"""Which models serve the app and the command line: the released weights, or the built-in demo model.

The demo model (``leffa.app.demo``, selected with ``--tiny``) needs no download and runs anywhere in seconds.
Its example inputs carry their own mask and DensePose, because the preprocessing models (human parsing,
OpenPose, DensePose) come with the released weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants as hub_constants

from leffa.app.batch import images_in
from leffa.app.checkpoints import FILES, MissingWeightsError, ensure_files, resolve_ckpt_dir
from leffa.app.demo import (
    DEMO_IMAGE_SIZE, DEMO_MODEL_DIR, EXAMPLE_PARTS, EXAMPLES_DIR, POSE_EXAMPLE_PARTS, demo_examples,
    load_demo_model, pose_example_indices, pose_example_name,
)
from leffa.common import resolve_device
from leffa.core.model import LeffaModel
from leffa.core.speed import SpeedOptions, apply_speed_options
from leffa.app.service import POSE_MODEL, TRYON_MODELS, ModelStore

#: Resolution choices: the model's own, or half of it per side for speed.
RESOLUTIONS: tuple[str, ...] = ("full", "half")
#: Device choices offered by the app and the command line.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
#: ``auto`` picks fp16 on CUDA (as the released demo runs) and fp32 elsewhere.
DTYPES: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
_MAX_AUTHOR_EXAMPLES = 6


@dataclass(frozen=True)
class TryOnExample:
    """Inputs of one try-on example; ``mask``/``densepose`` stand in for the preprocessing models."""

    person: Path
    garment: Path
    mask: Path | None = None
    densepose: Path | None = None


@dataclass(frozen=True)
class PoseExample:
    """Inputs of one pose-transfer example; ``densepose`` is that of the target pose."""

    person: Path
    target: Path
    densepose: Path | None = None


@dataclass
class Runtime:
    """The model store plus what the user should see about it (examples, missing weights, and the tasks
    whose model has not been trained for them, e.g. pose transfer on the built-in try-on model)."""

    store: ModelStore
    tiny: bool
    tryon_examples: list[TryOnExample]
    pose_examples: list[PoseExample]
    notice: str = ""
    untrained: frozenset[str] = field(default_factory=frozenset)


def model_size(store: ModelStore, key: str, resolution: str) -> tuple[int, int]:
    """Input size (width, height) of a Leffa model key: its own (``full``) or half of it per side."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; choose one of {', '.join(RESOLUTIONS)}")
    width, height = store.size(key)
    return (width // 2, height // 2) if resolution == "half" else (width, height)


def pick_dtype(dtype: str, device: str) -> str:
    """Resolve ``auto`` to fp16 on CUDA and fp32 elsewhere; other names pass through."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    return "fp16" if resolve_device(device).type == "cuda" else "fp32"


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
    keys = (*TRYON_MODELS, POSE_MODEL)
    models = {key: model for key in keys}
    if pose_model is not None:
        models[POSE_MODEL] = pose_model
    store = ModelStore(
        None, device=model.device, dtype=model.dtype, leffa_models=models, sizes={key: size for key in keys},
        preprocessing=False,
    )
    poses = _poses_of(examples) if pose_examples is None else pose_examples
    return Runtime(store, True, crossed(examples), poses, notice, frozenset(untrained))


def crossed(examples: list[TryOnExample]) -> list[TryOnExample]:
    """Each person (with their mask and DensePose) wearing another example's garment: first every person
    with the next one's garment, then the one after, and so on; the matched pairs are left out (kept when
    there is only one)."""
    count = len(examples)
    if count < 2:
        return list(examples)
    return [
        TryOnExample(person.person, examples[(index + shift) % count].garment, person.mask, person.densepose)
        for shift in range(1, count)
        for index, person in enumerate(examples)
    ]


def pose_transfer_trained(folder: Path = DEMO_MODEL_DIR) -> bool:
    """Whether the built-in demo has a trained pose-transfer model: ``<folder>/pose_transfer/`` with a JSON
    file (its config or metadata) that says ``"trained": true``."""
    for path in sorted((folder / POSE_MODEL).glob("*.json")):
        try:
            metadata = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metadata, dict) and metadata.get("trained") is True:
            return True
    return False


def _poses_of(examples: list[TryOnExample]) -> list[PoseExample]:
    """Pose examples from try-on ones, for example folders without pose examples: each person in the pose of
    the next (with its DensePose)."""
    return [PoseExample(a.person, b.person, b.densepose) for a, b in zip(examples, examples[1:])]


def tiny_runtime(
    *, device: str = "auto", dtype: str = "auto", notice: str = "", speed: SpeedOptions | None = None
) -> Runtime:
    """The built-in demo model (``leffa.app.demo``) serving every task, with the shipped example inputs."""
    model = load_demo_model(device, pick_dtype(dtype, device))
    trained = pose_transfer_trained()
    pose_model = load_demo_model(device, pick_dtype(dtype, device), task=POSE_MODEL) if trained else None
    if speed is not None:
        for each in filter(None, (model, pose_model)):
            apply_speed_options(each, speed)
    height, width = DEMO_IMAGE_SIZE
    untrained = frozenset() if trained else frozenset({POSE_MODEL})
    examples = demo_example_files(EXAMPLES_DIR)
    poses = _project_poses(EXAMPLES_DIR, examples)
    return single_model_runtime(model, (width, height), examples, notice, untrained, pose_model, poses)


def demo_example_files(folder: Path = EXAMPLES_DIR) -> list[TryOnExample]:
    """Paths of the shipped example inputs (the app's example tables need files, not images)."""
    demo_examples(folder)  # a clear error when the folder is incomplete
    return [
        TryOnExample(*(folder / person.name.replace("person", part, 1) for part in EXAMPLE_PARTS))
        for person in sorted(folder.glob("person_*.png"))
    ]


def demo_pose_example_files(folder: Path = EXAMPLES_DIR) -> list[PoseExample]:
    """Paths of the shipped pose examples (``pose_KK_person/target/densepose.png``: test samples of the pose
    demo model's check batch, written by ``python -m train.synthetic.pose_examples``); empty without any."""
    return [
        PoseExample(*(folder / pose_example_name(index, part) for part in POSE_EXAMPLE_PARTS))
        for index in pose_example_indices(folder)
    ]


def _project_poses(folder: Path, examples: list[TryOnExample]) -> list[PoseExample]:
    """The folder's pose examples, or pairs of its try-on persons when it has none."""
    return demo_pose_example_files(folder) or _poses_of(examples)


def released_runtime(
    ckpt_dir: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    offload: bool = False,
    download: bool = True,
    speed: SpeedOptions | None = None,
) -> Runtime:
    """The released weights from ``ckpt_dir``, loaded lazily (and downloaded on first use if allowed).

    ``speed`` (see :mod:`leffa.core.speed`) is applied to each Leffa model as it loads.
    """
    root = resolve_ckpt_dir(ckpt_dir)
    store = ModelStore(
        root, device=device, dtype=pick_dtype(dtype, device), download=downloads_possible(download),
        offload=offload, speed=speed,
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
    project_poses = [PoseExample(e.person, e.target) for e in _project_poses(EXAMPLES_DIR, project)]
    return Runtime(store, False, project_tryon + tryon, project_poses + poses, notice)

