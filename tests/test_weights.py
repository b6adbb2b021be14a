"""Weights lookup and download: a fake local hub stands in for franciszzj/Leffa; nothing is downloaded."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from leffa import weights
from leffa.weights import FILES, TASKS, MissingWeightsError, ensure_files, resolve_ckpt_dir

TRYON_PREPROCESSING_FILES = [
    "humanparsing/parsing_atr.onnx",
    "humanparsing/parsing_lip.onnx",
    "openpose/body_pose_model.pth",
    "densepose/model_final_162be9.pkl",
    "densepose/densepose_rcnn_R_50_FPN_s1x.yaml",
    "densepose/Base-DensePose-RCNN-FPN.yaml",
]
HUB_FILES = [
    "virtual_tryon.pth",
    "virtual_tryon_dc.pth",
    "pose_transfer.pth",
    *TRYON_PREPROCESSING_FILES,
    "schp/exp-schp-201908301523-atr.pth",
    "examples/person1/01.jpg",
    "examples/person2/02.jpg",
    "examples/garment/03.jpg",
    "stable-diffusion-inpainting/unet/config.json",
]
TRYON_FILES = {"virtual_tryon.pth", *TRYON_PREPROCESSING_FILES}


def _write_tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights of " + name.encode())


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch):
    """Replace snapshot_download by a copy from a local "hub" folder; record every call."""
    hub = tmp_path / "hub"
    _write_tree(hub, HUB_FILES)
    calls = []

    def fake_snapshot_download(repo_id, *, local_dir, allow_patterns):
        calls.append(
            {"repo_id": repo_id, "local_dir": Path(local_dir), "allow_patterns": list(allow_patterns)}
        )
        for name in HUB_FILES:
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                target = Path(local_dir) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(hub / name, target)
        return str(local_dir)

    monkeypatch.setattr(weights, "snapshot_download", fake_snapshot_download)
    return calls


def test_present_files_are_returned_without_network(tmp_path, fake_hub):
    _write_tree(tmp_path / "ckpts", sorted(TRYON_FILES))
    paths = ensure_files("virtual_tryon", tmp_path / "ckpts", download=True)
    assert fake_hub == []
    assert set(paths) == set(TASKS["virtual_tryon"])
    assert paths["parsing_atr"] == tmp_path / "ckpts" / "humanparsing" / "parsing_atr.onnx"
    assert {str(path.relative_to(tmp_path / "ckpts")) for path in paths.values()} == TRYON_FILES


def test_download_fetches_only_the_missing_files_of_the_task(tmp_path, fake_hub):
    root = tmp_path / "ckpts"
    _write_tree(root, ["virtual_tryon.pth"])
    paths = ensure_files("virtual_tryon", root, download=True)
    assert len(fake_hub) == 1
    call = fake_hub[0]
    assert call["repo_id"] == "franciszzj/Leffa"
    assert call["local_dir"] == root
    assert set(call["allow_patterns"]) == TRYON_FILES - {"virtual_tryon.pth"}
    assert (root / "virtual_tryon.pth").read_bytes() == b"weights of virtual_tryon.pth"
    assert paths["openpose"].read_bytes() == b"weights of openpose/body_pose_model.pth"
    assert not (root / "virtual_tryon_dc.pth").exists() and not (root / "schp").exists()


def test_pose_transfer_needs_only_its_model_and_densepose(tmp_path, fake_hub):
    ensure_files("pose_transfer", tmp_path, download=True)
    assert set(fake_hub[0]["allow_patterns"]) == {
        "pose_transfer.pth",
        "densepose/model_final_162be9.pkl",
        "densepose/densepose_rcnn_R_50_FPN_s1x.yaml",
        "densepose/Base-DensePose-RCNN-FPN.yaml",
    }


def test_examples_are_fetched_as_folders(tmp_path, fake_hub):
    paths = ensure_files("examples", tmp_path, download=True)
    assert set(fake_hub[0]["allow_patterns"]) == {
        "examples/person1/*",
        "examples/person2/*",
        "examples/garment/*",
    }
    assert (paths["examples_garment"] / "03.jpg").is_file()


def test_missing_without_download_names_each_file_and_the_command(tmp_path, fake_hub):
    root = tmp_path / "ckpts"
    _write_tree(root, ["humanparsing/parsing_atr.onnx", "humanparsing/parsing_lip.onnx"])
    (root / "openpose").mkdir()
    (root / "openpose" / "body_pose_model.pth").write_bytes(b"")
    with pytest.raises(MissingWeightsError) as raised:
        ensure_files("preprocess", root)
    message = str(raised.value)
    assert fake_hub == []
    assert isinstance(raised.value, FileNotFoundError)
    assert str(root / "openpose" / "body_pose_model.pth") in message
    assert str(root / "densepose" / "model_final_162be9.pkl") in message
    assert "parsing_atr" not in message
    assert f"python -m leffa download preprocess --ckpt-dir {root}" in message


def test_hub_error_becomes_missing_weights_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: Name or service not known")

    monkeypatch.setattr(weights, "snapshot_download", offline)
    with pytest.raises(MissingWeightsError, match="Name or service not known") as raised:
        ensure_files("virtual_tryon_dc", tmp_path, download=True)
    message = str(raised.value)
    assert "virtual_tryon_dc.pth" in message
    # the download just failed, so the message does not offer the same download again: it says what to check
    assert "python -m leffa download" not in message
    assert "reaches huggingface.co" in message and f"https://huggingface.co/franciszzj/Leffa/tree/main into {tmp_path}" in message


def test_download_that_leaves_files_missing_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "snapshot_download", lambda *args, **kwargs: str(tmp_path))
    with pytest.raises(MissingWeightsError, match=r"pose_transfer\.pth"):
        ensure_files("pose_transfer", tmp_path, download=True)


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(
        ValueError, match="virtual_tryon, virtual_tryon_dc, pose_transfer, preprocess, parsing, openpose, densepose, examples"
    ):
        ensure_files("tryon", tmp_path)


def test_checkpoint_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("LEFFA_CKPT_DIR", raising=False)
    assert resolve_ckpt_dir() == Path("ckpts")
    monkeypatch.setenv("LEFFA_CKPT_DIR", str(tmp_path / "env"))
    assert resolve_ckpt_dir() == tmp_path / "env"
    assert resolve_ckpt_dir(tmp_path / "arg") == tmp_path / "arg"


def test_env_dir_is_used_by_ensure_files(tmp_path, monkeypatch, fake_hub):
    monkeypatch.setenv("LEFFA_CKPT_DIR", str(tmp_path / "env"))
    paths = ensure_files("pose_transfer", download=True)
    assert fake_hub[0]["local_dir"] == tmp_path / "env"
    assert paths["pose_transfer"] == tmp_path / "env" / "pose_transfer.pth"


def test_every_task_file_is_in_the_file_table():
    for names in TASKS.values():
        assert set(names) <= set(FILES)
