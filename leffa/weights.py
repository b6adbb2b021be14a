"""Released weights: which files each task needs, where they live locally, and how to fetch them.

The Hugging Face repo `franciszzj/Leffa` holds ~36 GB; a try-on user needs ~8 GB of it. Each task
names exactly the files it needs, and only those are downloaded (`allow_patterns`). A local directory
with the repo's layout works without any network access.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import snapshot_download

REPO_ID = "franciszzj/Leffa"
CKPT_DIR_ENV = "LEFFA_CKPT_DIR"
DEFAULT_CKPT_DIR = Path("ckpts")

# Logical name -> path inside the repo. A path ending in "/" is a folder whose whole content is needed.
FILES: dict[str, str] = {
    "virtual_tryon": "virtual_tryon.pth",
    "virtual_tryon_dc": "virtual_tryon_dc.pth",
    "pose_transfer": "pose_transfer.pth",
    "parsing_atr": "humanparsing/parsing_atr.onnx",
    "parsing_lip": "humanparsing/parsing_lip.onnx",
    "openpose": "openpose/body_pose_model.pth",
    "densepose_weights": "densepose/model_final_162be9.pkl",
    "densepose_config": "densepose/densepose_rcnn_R_50_FPN_s1x.yaml",
    "densepose_base_config": "densepose/Base-DensePose-RCNN-FPN.yaml",
    "examples_person1": "examples/person1/",
    "examples_person2": "examples/person2/",
    "examples_garment": "examples/garment/",
}

_DENSEPOSE = ("densepose_weights", "densepose_config", "densepose_base_config")
_PREPROCESS = ("parsing_atr", "parsing_lip", "openpose", *_DENSEPOSE)

TASKS: dict[str, tuple[str, ...]] = {
    "virtual_tryon": ("virtual_tryon", *_PREPROCESS),
    "virtual_tryon_dc": ("virtual_tryon_dc", *_PREPROCESS),
    "pose_transfer": ("pose_transfer", *_DENSEPOSE),
    "preprocess": _PREPROCESS,
    "parsing": ("parsing_atr", "parsing_lip"),
    "openpose": ("openpose",),
    "densepose": _DENSEPOSE,
    "examples": ("examples_person1", "examples_person2", "examples_garment"),
}


class MissingWeightsError(FileNotFoundError):
    """Weights needed by a task are not in the checkpoint directory and could not be downloaded."""


def resolve_ckpt_dir(ckpt_dir: str | Path | None = None) -> Path:
    """The checkpoint directory: the argument, else $LEFFA_CKPT_DIR, else ./ckpts."""
    if ckpt_dir is not None:
        return Path(ckpt_dir)
    return Path(os.environ.get(CKPT_DIR_ENV) or DEFAULT_CKPT_DIR)


def ensure_files(task: str, ckpt_dir: str | Path | None = None, *, download: bool = False) -> dict[str, Path]:
    """Local paths of every file `task` needs, downloading the missing ones when `download` is true.

    Files already present are used as they are, without any network access. Raises
    `MissingWeightsError` naming each missing file and the command that downloads it.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    root = resolve_ckpt_dir(ckpt_dir)
    missing = _missing(task, root)
    if missing and download:
        cause = _download(missing, root)
        missing = _missing(task, root)
        if missing:
            raise MissingWeightsError(_missing_message(task, root, missing, cause)) from cause
    elif missing:
        raise MissingWeightsError(_missing_message(task, root, missing, None))
    return {name: root / FILES[name] for name in TASKS[task]}


def download_command(task: str, ckpt_dir: str | Path) -> str:
    """The shell command that fetches the files of `task` into `ckpt_dir`."""
    return f"python -m leffa download {task} --ckpt-dir {ckpt_dir}"


def _missing(task: str, root: Path) -> list[str]:
    return [name for name in TASKS[task] if not _present(root / FILES[name], FILES[name].endswith("/"))]


def _present(path: Path, is_folder: bool) -> bool:
    """A file counts when it is non-empty; a folder when it holds at least one file.

    huggingface_hub writes into a temporary file and renames it when complete, so an interrupted
    download never leaves a partial file under its final name.
    """
    if is_folder:
        return path.is_dir() and any(child.is_file() for child in path.rglob("*"))
    return path.is_file() and path.stat().st_size > 0


def _download(names: list[str], root: Path) -> Exception | None:
    """Fetch `names` from the hub into `root` (resumable, with progress bars); return the error, if any."""
    patterns = [FILES[name] + "*" if FILES[name].endswith("/") else FILES[name] for name in names]
    try:
        snapshot_download(REPO_ID, local_dir=root, allow_patterns=patterns)
    except (OSError, huggingface_hub.errors.HTTPError) as error:
        return error
    return None


def _missing_message(task: str, root: Path, missing: list[str], cause: Exception | None) -> str:
    """Which files are missing, and the way on: the download command, or, when the download itself just
    failed, what to check and how to get the files by hand (running the same command again would fail)."""
    listed = "\n".join(f"  - {root / FILES[name]}" for name in missing)
    head = f"weights for task {task!r} are missing from {root}:\n{listed}\n"
    if cause is None:
        return head + f"Download them (from the Hugging Face repo {REPO_ID}) with:\n  {download_command(task, root)}"
    return head + (
        f"Downloading them from the Hugging Face repo {REPO_ID} failed: {cause}\n"
        "Check that this machine reaches huggingface.co (or your mirror in HF_ENDPOINT) and that "
        "HF_HUB_OFFLINE is not set, then try again; or copy the files above by hand from "
        f"https://huggingface.co/{REPO_ID}/tree/main into {root} (files already there are kept)."
    )
