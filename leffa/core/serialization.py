"""Reading, checking and writing checkpoints in the released key format (``vae.*``, ``unet_encoder.*``, ``unet.*``).

Released ``.pth`` files are plain pickled ``dict[str, Tensor]``; they are read with
``torch.load(weights_only=True, mmap=True)`` so nothing but tensors can be unpickled and nothing is copied
into memory before it is needed. ``.safetensors`` files are read and written with the safetensors library.

A checkpoint's model configs travel with it so that any file this project writes loads with
``LeffaModel.from_pretrained``: in the ``.safetensors`` header (:func:`save_state_dict` with ``configs``) or as
``unet.json``/``vae.json``/``scheduler.json`` beside the weights (a model folder). Released ``.pth`` files carry
none; their base is detected from the keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from leffa.common import check_state_dict
from leffa.core.configs import BaseConfigs, load_base_configs

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: The weights file of a model folder.
MODEL_FILE = "model.safetensors"
#: Beside a model's weights: what is known about how it was made (the demo models write ``image_size``).
METADATA_FILE = "metadata.json"
#: The config files of a model folder (``<part>.json`` beside the weights) and header keys (``leffa.<part>``).
CONFIG_PARTS = ("unet", "vae", "scheduler")
_METADATA_PREFIX = "leffa."
_BASE_KEY = _METADATA_PREFIX + "base"
_REDOWNLOAD = "the file is damaged or was cut short; download, convert or export it again"


def _torch_load_tensors(path: Path):
    """``torch.load`` restricted to tensors; memory-mapped unless the file predates the zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` as an existing, non-empty checkpoint file of a supported type, or a clear error."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory; pass the weights file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix not in TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,):
        raise ValueError(
            f"unsupported checkpoint type {path.suffix!r} for {path}; expected one of "
            f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); {_REDOWNLOAD}")
    return path


def _unreadable_safetensors(path: Path, error: SafetensorError) -> ValueError:
    return ValueError(f"could not read {path} as a safetensors checkpoint ({error}); {_REDOWNLOAD}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.bin`` (tensors only) or ``.safetensors`` state dict onto the CPU."""
    path = _checkpoint_file(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise _unreadable_safetensors(path, error) from error
    try:
        state = _torch_load_tensors(path)
    except Exception as error:  # unpickling errors come in many types; all mean "not a tensor dict"
        reason = str(error) or type(error).__name__
        raise ValueError(f"could not read {path} as a tensor checkpoint ({reason}); {_REDOWNLOAD}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain dict of tensors (the released checkpoint format)")
    return dict(state)


def save_state_dict(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    *,
    configs: BaseConfigs | None = None,
) -> Path:
    """Write ``state`` as ``.safetensors`` or ``.pth`` (chosen by suffix), optionally cast to ``dtype``.

    ``configs`` go into the ``.safetensors`` header, so ``LeffaModel.from_pretrained`` rebuilds the same model;
    a ``.pth`` (the released format: tensors only) cannot hold them.
    """
    path = Path(path)
    if path.suffix not in TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,):
        raise ValueError(f"unsupported output type {path.suffix!r}; use .safetensors or .pth")
    if configs is not None and path.suffix != SAFETENSORS_SUFFIX:
        raise ValueError(f"{path}: a {path.suffix} file cannot store the model configs; write .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in state.items()
    }
    if path.suffix == SAFETENSORS_SUFFIX:
        save_file(tensors, str(path), metadata=None if configs is None else _configs_metadata(configs))
    else:
        torch.save(tensors, path)
    return path


def _configs_metadata(configs: BaseConfigs) -> dict[str, str]:
    parts = {part: getattr(configs, part) for part in CONFIG_PARTS}
    return {_BASE_KEY: configs.name, **{_METADATA_PREFIX + part: json.dumps(c) for part, c in parts.items()}}


def read_config_files(folder: str | os.PathLike) -> dict[str, dict]:
    """The ``unet``, ``vae`` and ``scheduler`` config dicts of a model folder (``<part>.json`` files)."""
    configs = {}
    for part in CONFIG_PARTS:
        file = Path(folder) / f"{part}.json"
        try:
            configs[part] = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"model config {file} is not valid JSON ({error}); restore or rewrite it") from error
    return configs


def write_config_files(configs: BaseConfigs, folder: str | os.PathLike) -> None:
    """``unet.json``, ``vae.json`` and ``scheduler.json`` in ``folder``: what :func:`read_config_files` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for part in CONFIG_PARTS:
        (folder / f"{part}.json").write_text(json.dumps(getattr(configs, part), indent=2) + "\n")


def model_folder_weights(folder: str | os.PathLike) -> Path:
    """The weights of a model folder (``model.safetensors``, with ``unet.json``, ``vae.json`` and
    ``scheduler.json`` beside it unless its header carries them); a ``FileNotFoundError`` naming what is
    missing otherwise (some config files without the others, or no weights)."""
    folder = Path(folder)
    configs = [f"{part}.json" for part in CONFIG_PARTS]
    present = [name for name in configs if (folder / name).is_file()]
    missing = [name for name in configs if present and name not in present]
    if not (folder / MODEL_FILE).is_file():
        missing.append(MODEL_FILE)
    if missing:
        raise FileNotFoundError(
            f"model incomplete in {folder}: missing {', '.join(missing)} (a model folder holds {MODEL_FILE} and, "
            f"unless its header carries them, {', '.join(configs)})"
        )
    return folder / MODEL_FILE


def trained_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """The (height, width) a model was trained at, from the ``image_size`` of the ``metadata.json`` beside
    its weights; ``None`` when there is no such file or entry (the released checkpoints)."""
    file = _checkpoint_file(path).parent / METADATA_FILE
    if not file.is_file():
        return None
    try:
        size = json.loads(file.read_text()).get("image_size")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{file} is not a JSON object ({error}); restore or rewrite it") from error
    if size is None:
        return None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{file}: image_size must be [height, width] in pixels, got {size!r}")
    return size[0], size[1]


def stored_configs(path: str | os.PathLike) -> BaseConfigs | None:
    """The model configs stored with a checkpoint, or ``None`` when it carries none (released ``.pth``).

    Looked for in the ``.safetensors`` header first, then as the three config files beside the weights.
    """
    path = _checkpoint_file(path)
    metadata = {}
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
        except SafetensorError as error:
            raise _unreadable_safetensors(path, error) from error
    name = metadata.get(_BASE_KEY, "custom")
    if all(_METADATA_PREFIX + part in metadata for part in CONFIG_PARTS):
        try:
            parts = {part: json.loads(metadata[_METADATA_PREFIX + part]) for part in CONFIG_PARTS}
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: the model configs in its header are not valid JSON ({error})") from error
        return BaseConfigs(**parts, name=name)
    if all((path.parent / f"{part}.json").is_file() for part in CONFIG_PARTS):
        return BaseConfigs(**read_config_files(path.parent), name=name)
    return None


def detect_base(state: Mapping[str, torch.Tensor]) -> str:
    """Which shipped base a released-format state dict belongs to (by its keys and widths)."""
    conv_in = state.get("unet.conv_in.weight")
    if conv_in is None:
        raise ValueError("not a Leffa checkpoint: it has no 'unet.conv_in.weight' (expected vae.*, unet_encoder.*, unet.*)")
    if conv_in.shape[0] == 32:
        return "tiny"
    return "sdxl-inpainting" if "unet.add_embedding.linear_1.weight" in state else "sd15-inpainting"


def checkpoint_configs(
    path: str | os.PathLike, state: Mapping[str, torch.Tensor], base: str | BaseConfigs = "auto"
) -> BaseConfigs:
    """What to build the model of checkpoint ``path`` (weights ``state``) from: ``base`` when given, else the
    configs stored with the file (:func:`stored_configs`), else the shipped base
    its keys match (:func:`detect_base`)."""
    if base != "auto":
        return load_base_configs(base) if isinstance(base, str) else base
    stored = stored_configs(path)
    if stored is not None:
        return stored
    try:
        return load_base_configs(detect_base(state))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def convert_checkpoint(
    source: str | os.PathLike, out: str | os.PathLike, *, fp16: bool = False, base: str | BaseConfigs = "auto",
    overwrite: bool = False,
) -> BaseConfigs:
    """Check a checkpoint strictly against the model it is for, then write a copy (optionally fp16); a
    ``.safetensors`` copy keeps the model configs in its header, so it loads alone. Returns those configs.

    A ``.pth`` copy cannot hold configs: it is refused for a model other than the shipped base its keys
    detect as. The model is built on the meta device only to know every key's shape.
    """
    from leffa.core.model import LeffaModel  # the model module imports this one

    source, out = Path(source), Path(out)
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"output {out} is the input checkpoint; write the copy to another file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or choose another output")
    state = read_state_dict(source)
    configs = checkpoint_configs(source, state, base)
    expected = {name: t.shape for name, t in LeffaModel.from_base(configs, device="meta").state_dict().items()}
    check_state_dict(expected, state, hint=f"model base: {configs.name}")
    stored = configs if out.suffix == SAFETENSORS_SUFFIX else None
    if stored is None and not _detected_as(state, configs):
        raise ValueError(
            f"{source} has model configs of its own, which a {out.suffix} file cannot hold; write a "
            f"{SAFETENSORS_SUFFIX} file (its header keeps them)"
        )
    save_state_dict(state, out, dtype=torch.float16 if fp16 else None, configs=stored)
    return configs


def _detected_as(state: Mapping[str, torch.Tensor], configs: BaseConfigs) -> bool:
    """Whether a file holding only ``state`` (a ``.pth``) would load as ``configs`` by base detection."""
    try:
        shipped = load_base_configs(detect_base(state))
    except ValueError:
        return False
    return (shipped.unet, shipped.vae, shipped.scheduler) == (configs.unet, configs.vae, configs.scheduler)
