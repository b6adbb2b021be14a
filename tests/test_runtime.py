"""Choosing the models behind the app and the command line (no weights are loaded here)."""

from __future__ import annotations

import copy
import threading
from dataclasses import replace

import pytest
import torch
from PIL import Image

import leffa.app.runtime
from leffa.app.callbacks import AppCallbacks, TryOnInputs
from leffa.app.examples import TryOnExample, demo_example_files, demo_pose_example_files
from leffa.app.runtime import downloads_possible, pick_dtype, released_runtime, single_model_runtime, tiny_runtime
from leffa.app.service import ModelStore, PreprocessingUnavailableError
from leffa.app.models import RELEASED_MODELS, frame_size, served_at
from leffa.core.serialization import save_state_dict


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 128), "white").save(path)
    return path


def test_frame_size_and_dtype_choices():
    store = ModelStore(None, device="cpu", models={**RELEASED_MODELS, **served_at({"viton_hd": RELEASED_MODELS["viton_hd"]}, (96, 128), "demo")})
    assert frame_size(store.spec("viton_hd"), "full") == (96, 128)
    assert frame_size(store.spec("viton_hd"), "half") == (48, 64)
    assert frame_size(store.spec("dress_code"), "half") == (384, 512)  # the released models' 768×1024
    with pytest.raises(ValueError, match="unknown model type 'idm'; choose one of viton_hd, dress_code, pose_transfer"):
        store.size("idm")
    with pytest.raises(ValueError, match="unknown resolution '4k'; choose one of full, half"):
        frame_size(store.spec("viton_hd"), "4k")
    assert pick_dtype("auto", "cpu") == "fp32" and pick_dtype("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        pick_dtype("fp8", "cpu")


def test_offline_hub_means_no_downloads(monkeypatch):
    monkeypatch.setattr(leffa.app.runtime.hub_constants, "HF_HUB_OFFLINE", False)
    assert downloads_possible(True) and not downloads_possible(False)
    monkeypatch.setattr(leffa.app.runtime.hub_constants, "HF_HUB_OFFLINE", True)
    assert not downloads_possible(True)


def _project_examples(folder, count=2):
    for k in range(count):
        for part in ("person", "garment", "mask", "densepose"):
            _image(folder / f"{part}_{k:02d}.png")
    return folder


def _pose_examples(folder, count=2):
    for k in range(count):
        for part in ("person", "target", "densepose"):
            _image(folder / f"pose_{k:02d}_{part}.png")
    return folder


def test_released_runtime_lists_missing_weights_and_the_examples(tmp_path, monkeypatch):
    monkeypatch.setattr(leffa.app.runtime, "EXAMPLES_DIR", tmp_path / "no-assets")
    for name in ("person1/a.jpg", "person1/b.jpg", "person2/c.jpg", "person2/d.png", "garment/x.jpg"):
        _image(tmp_path / "ckpts" / "examples" / name)
    (tmp_path / "ckpts" / "examples" / "garment" / "notes.txt").write_text("not an image")
    runtime = released_runtime(tmp_path / "ckpts", device="cpu", download=False)
    assert not runtime.tiny and not runtime.store.download and runtime.memory == "auto"
    assert "virtual_tryon.pth" in runtime.notice
    assert "python -m leffa download virtual_tryon" in runtime.notice
    tryon = [(e.person.name, e.garment.name, e.mask) for e in runtime.tryon_examples]
    assert tryon == [("a.jpg", "x.jpg", None)]  # the authors' examples, without mask and DensePose
    assert [(e.person.name, e.target.name) for e in runtime.pose_examples] == [("c.jpg", "d.png")]

    monkeypatch.setattr(leffa.app.runtime, "EXAMPLES_DIR", _project_examples(tmp_path / "assets"))
    runtime = released_runtime(tmp_path / "ckpts", device="cpu", download=False)
    names = [(e.person.name, e.mask and e.mask.name) for e in runtime.tryon_examples]
    assert names == [("person_00.png", "mask_00.png"), ("person_01.png", "mask_01.png"), ("a.jpg", None)]
    assert all(e.densepose is None for e in runtime.tryon_examples + runtime.pose_examples)  # not in released format
    assert [e.target.name for e in runtime.pose_examples] == ["person_01.png", "d.png"]
    without_authors = released_runtime(tmp_path / "empty", device="cpu", download=False)
    assert [e.person.name for e in without_authors.tryon_examples] == ["person_00.png", "person_01.png"]
    _pose_examples(tmp_path / "assets", count=1)
    with_poses = released_runtime(tmp_path / "ckpts", device="cpu", download=False)
    assert [(e.person.name, e.target.name) for e in with_poses.pose_examples] == [
        ("pose_00_person.png", "pose_00_target.png"), ("c.jpg", "d.png"),
    ]


def test_single_model_runtime_serves_every_task(tiny_model, tmp_path):
    parts = ("p", "g", "m", "d")
    examples = [TryOnExample(*(_image(tmp_path / f"{part}_{k}.png") for part in parts)) for k in range(3)]
    runtime = single_model_runtime(tiny_model, (48, 64), examples, notice="note")
    store = runtime.store
    assert runtime.tiny and runtime.notice == "note" and store.device == torch.device("cpu")
    assert all(store.pipeline(key).model is tiny_model for key in ("viton_hd", "dress_code", "pose_transfer"))
    assert store.size("pose_transfer") == (48, 64)
    poses = [(e.person.name, e.target.name, e.densepose.name) for e in runtime.pose_examples]
    assert poses == [("p_0.png", "p_1.png", "d_1.png"), ("p_1.png", "p_2.png", "d_2.png")]


def test_the_tiny_runtime_says_it_cannot_preprocess_photos(tiny_model, tmp_path, monkeypatch):
    """Even with preprocessing weights in ./ckpts, the demo model does not preprocess: the message says what
    is true and both ways on, and no weights are looked for."""
    monkeypatch.chdir(tmp_path)
    actions = AppCallbacks(single_model_runtime(tiny_model, (48, 64), []).store)
    photo = _image(tmp_path / "person.png")
    for run in (
        lambda: actions.make_mask(TryOnInputs(photo, photo)),
        lambda: actions.make_mask(TryOnInputs(photo, photo, mask=photo)),
        lambda: actions.pose_transfer(photo, photo),
    ):
        with pytest.raises(PreprocessingUnavailableError) as raised:
            run()
        message = str(raised.value)
        assert message.startswith("the built-in demo model cannot preprocess photos: it has no human parsing")
        assert "--mask and --densepose" in message and "python -m leffa download virtual_tryon" in message
        assert "are missing" not in message


def test_demo_example_files_name_each_part(tmp_path):
    files = demo_example_files(_project_examples(tmp_path))
    assert [(e.person.name, e.garment.name, e.mask.name, e.densepose.name) for e in files] == [
        ("person_00.png", "garment_00.png", "mask_00.png", "densepose_00.png"),
        ("person_01.png", "garment_01.png", "mask_01.png", "densepose_01.png"),
    ]
    (tmp_path / "mask_01.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing mask_01.png"):
        demo_example_files(tmp_path)


def test_demo_pose_example_files_name_each_part(tmp_path):
    assert demo_pose_example_files(tmp_path) == []
    files = demo_pose_example_files(_pose_examples(tmp_path))
    assert [(e.person.name, e.target.name, e.densepose.name) for e in files] == [
        ("pose_00_person.png", "pose_00_target.png", "pose_00_densepose.png"),
        ("pose_01_person.png", "pose_01_target.png", "pose_01_densepose.png"),
    ]
    (tmp_path / "pose_01_densepose.png").unlink()
    message = "pose example 01 in .* is incomplete: missing pose_01_densepose.png; restore assets/examples"
    with pytest.raises(FileNotFoundError, match=message):
        demo_pose_example_files(tmp_path)


def test_the_store_changes_a_memory_level_only_between_calls(tiny_model):
    store = ModelStore(None, device="cpu", loaded={"viton_hd": copy.deepcopy(tiny_model)})
    changed = threading.Event()

    def ask_for_offloading() -> None:
        store.pipeline("viton_hd", memory="model_offload")
        changed.set()

    with store.serving("viton_hd", memory="none") as pipe:
        assert pipe.model.memory_level == "none"
        with store.serving("viton_hd", memory="none") as same:  # calls at one level share the model
            assert same is pipe
        waiting = threading.Thread(target=ask_for_offloading)
        waiting.start()
        assert not changed.wait(0.3) and pipe.model.memory_level == "none"  # not under a running call
    assert changed.wait(30) and pipe.model.memory_level == "model_offload"
    waiting.join()
    assert "leffa:viton_hd (memory: model_offload)" in store.describe()


def test_the_store_loads_the_weights_again_to_leave_a_lasting_level(tiny_model, tmp_path):
    path = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.safetensors")
    models = {"viton_hd": replace(RELEASED_MODELS["viton_hd"], weights=path, base="tiny")}
    store = ModelStore(None, models=models, device="cpu", dtype="fp32")
    statuses: list[str] = []
    quantised = store.pipeline("viton_hd", statuses.append, memory="int8")
    assert quantised.model.memory_level == "int8"
    plain = store.pipeline("viton_hd", statuses.append, memory="none")
    assert plain is not quantised and plain.model.memory_level == "none"
    assert torch.equal(plain.model.unet.conv_in.weight, tiny_model.unet.conv_in.weight)
    assert statuses[-1] == "loading leffa:viton_hd again to leave memory level int8"
    assert store.pipeline("viton_hd", memory="auto").model.memory_level == "none"  # auto on the CPU


def test_tiny_runtime_serves_the_demo_models_with_their_examples(tiny_model, tmp_path, monkeypatch):
    loads = []
    pose_model = copy.deepcopy(tiny_model)
    monkeypatch.setattr(leffa.app.runtime, "pose_transfer_trained", lambda: True)

    def load_demo_model(device, dtype, task="virtual_tryon"):
        loads.append((dtype, task))
        return tiny_model if task == "virtual_tryon" else pose_model

    monkeypatch.setattr(leffa.app.runtime, "load_demo_model", load_demo_model)
    monkeypatch.setattr(leffa.app.runtime, "EXAMPLES_DIR", _pose_examples(_project_examples(tmp_path, count=3)))
    runtime = tiny_runtime(device="cpu", notice="weights missing")
    assert loads == [("fp32", "virtual_tryon"), ("fp32", "pose_transfer")]
    assert runtime.tiny and runtime.notice == "weights missing" and not runtime.untrained
    assert runtime.store.pipeline("pose_transfer").model is pose_model
    assert runtime.store.size("viton_hd") == (96, 128)  # the demo model's own size
    assert runtime.store.pipeline("dress_code").model is tiny_model
    assert [e.densepose.name for e in runtime.tryon_examples] == [f"densepose_{k:02d}.png" for k in range(3)] * 2
    poses = [(e.person.name, e.target.name, e.densepose.name) for e in runtime.pose_examples]
    assert poses == [tuple(f"pose_{k:02d}_{part}.png" for part in ("person", "target", "densepose")) for k in range(2)]
