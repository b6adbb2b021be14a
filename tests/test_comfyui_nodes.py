"""The ComfyUI nodes (``comfyui_nodes/``): their contract with ComfyUI, the example workflows' links, and the
workflows run through the node classes on the demo model, against the Python API.

ComfyUI is not installed here, so this file plays its part: it reads ``INPUT_TYPES`` as ComfyUI builds
widgets and sockets, runs a workflow in API format node by node in link order, and stands in for the four
built-in nodes the workflows use (LoadImage, ImageToMask, SaveImage, PreviewImage) as ComfyUI defines them.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_nodes import nodes as leffa_nodes
from leffa import LeffaModel, LeffaPipeline
from leffa.app.runtime import Runtime, tiny_runtime
from leffa.app.service import PreprocessingUnavailableError
from leffa.core.transforms import crop_back, letterbox
from preprocess.mask_adjust import MaskAdjustments, adjust_mask
from tests.conftest import REPO_ROOT, requirement_pins
from tests.fake_preprocessing import FakeDensePose, FakeOpenPose, FakeParser

WORKFLOWS = REPO_ROOT / "comfyui_nodes" / "workflows"
EXAMPLES = REPO_ROOT / "assets" / "examples"
#: The file names of the released workflows, as the shipped examples that stand in for them.
STAND_INS = {"person.jpg": "person_00.png", "garment.jpg": "garment_01.png", "pose.jpg": "pose_00_target.png"}
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")
SOCKETS = ("IMAGE", "MASK", "LEFFA_MODEL", "LEFFA_RUN")


# ------------------------------------------------------------------------ ComfyUI's part, played here
def _load_image(image: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's LoadImage: RGB in 0..1 and the mask 1 - alpha (64×64 zeros for an image without alpha)."""
    with Image.open(EXAMPLES / STAND_INS.get(image, image)) as picture:
        rgb = np.asarray(picture.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(rgb)[None], torch.zeros((1, 64, 64))


def _image_to_mask(image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
    return (image[..., ("red", "green", "blue", "alpha").index(channel)],)


class _Output:
    def __init__(self) -> None:
        self.saved: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, filename_prefix: str = "") -> tuple:
        self.saved.append(images)
        return ()


def _input_specs(node_class) -> dict[str, tuple]:
    specs = node_class.INPUT_TYPES()
    return {name: spec for section in ("required", "optional") for name, spec in specs.get(section, {}).items()}


@torch.inference_mode()
def _run_workflow(graph: dict, builtins: dict) -> dict[str, tuple]:
    """Every node's outputs, each node run once its linked inputs are there (ComfyUI's order), under
    ``torch.inference_mode`` as ComfyUI runs nodes."""
    outputs: dict[str, tuple] = {}
    while len(outputs) < len(graph):
        ready = [
            key for key, node in graph.items() if key not in outputs
            and all(value[0] in outputs for value in node["inputs"].values() if isinstance(value, list))
        ]
        assert ready, "the workflow has a cycle or a link to a missing node"
        for key in ready:
            node = graph[key]
            inputs = {name: outputs[value[0]][value[1]] if isinstance(value, list) else value
                      for name, value in node["inputs"].items()}
            if node["class_type"] in builtins:
                outputs[key] = builtins[node["class_type"]](**inputs)
                continue
            node_class = NODE_CLASS_MAPPINGS[node["class_type"]]
            result = getattr(node_class(), node_class.FUNCTION)(**inputs)
            assert isinstance(result, tuple) and len(result) == len(node_class.RETURN_TYPES)
            for kind, value in zip(node_class.RETURN_TYPES, result):
                _check_output(kind, value)
            outputs[key] = result
    return outputs


def _check_output(kind: str, value: object) -> None:
    """A node's output is what its declared type means to ComfyUI."""
    if kind == "IMAGE":
        assert value.ndim == 4 and value.shape[-1] == 3 and value.dtype == torch.float32
        assert 0.0 <= float(value.min()) and float(value.max()) <= 1.0
    elif kind == "MASK":
        assert value.ndim == 3 and value.dtype == torch.float32 and set(value.unique().tolist()) <= {0.0, 1.0}
    elif kind == "STRING":
        assert isinstance(value, str)
    elif kind == "LEFFA_MODEL":
        assert isinstance(value, Runtime)
    else:
        assert kind == "LEFFA_RUN" and isinstance(value, leffa_nodes.LeffaRun)


def _builtins(saved: _Output, previewed: _Output) -> dict:
    return {"LoadImage": _load_image, "ImageToMask": _image_to_mask, "SaveImage": saved, "PreviewImage": previewed}


#: The inputs of ComfyUI's built-in nodes the workflows use, and their output types.
BUILTIN_TYPES = {
    "LoadImage": ({"image": "STRING"}, ("IMAGE", "MASK")),
    "ImageToMask": ({"image": "IMAGE", "channel": "STRING"}, ("MASK",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, ()),
    "PreviewImage": ({"images": "IMAGE"}, ()),
}


def _declared(class_type: str) -> tuple[dict[str, object], tuple[str, ...]]:
    if class_type in BUILTIN_TYPES:
        return BUILTIN_TYPES[class_type]
    node_class = NODE_CLASS_MAPPINGS[class_type]
    return {name: spec[0] for name, spec in _input_specs(node_class).items()}, node_class.RETURN_TYPES


# ------------------------------------------------------------------------------------------ contract
def test_the_pack_exports_its_nodes_as_comfyui_imports_them():
    """ComfyUI imports each folder of custom_nodes/ by its path, under the folder's name: the repository
    cloned whole, or the nodes folder linked alone."""
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {
        "LeffaModelLoader", "LeffaMakeMask", "LeffaTryOn", "LeffaPoseTransfer", "LeffaAttentionMap",
    }
    for name, folder in (("leffa-main", REPO_ROOT), ("leffa_linked", REPO_ROOT / "comfyui_nodes")):
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            assert set(module.NODE_CLASS_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
            assert module.NODE_DISPLAY_NAME_MAPPINGS == NODE_DISPLAY_NAME_MAPPINGS
        finally:
            for key in [key for key in sys.modules if key == name or key.startswith(f"{name}.")]:
                del sys.modules[key]


def test_the_nodes_import_without_the_apps_and_trainers_packages():
    """ComfyUI's Python has none of gradio, tensorboard or the metrics packages (comfyui_nodes/requirements.txt)."""
    blocked = ("gradio", "gradio_client", "tensorboard", "lpips", "cleanfid", "torchmetrics")
    code = (
        f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
        "import comfyui_nodes\nprint(len(comfyui_nodes.NODE_CLASS_MAPPINGS))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "5", result.stderr[-2000:]


def test_a_missing_requirement_is_named_with_the_command_that_installs_it():
    code = "import sys\nsys.modules['diffusers'] = None\nimport comfyui_nodes"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and message.startswith(
        "ModuleNotFoundError: the Leffa nodes need the package 'diffusers', which ComfyUI's Python"
    )
    assert message.endswith(f"-m pip install -r {REPO_ROOT / 'comfyui_nodes' / 'requirements.txt'}")


def test_the_nodes_requirements_are_the_projects_pins():
    project = requirement_pins(REPO_ROOT / "requirements.txt")
    nodes = requirement_pins(REPO_ROOT / "comfyui_nodes" / "requirements.txt")
    assert nodes and all(project.get(name) == version for name, version in nodes.items())
    assert not {"torch", "torchvision", "numpy", "pillow", "gradio"} & set(nodes)


@pytest.mark.parametrize("class_type", sorted(NODE_CLASS_MAPPINGS))
def test_every_node_declares_what_its_function_takes_and_returns(class_type):
    node_class = NODE_CLASS_MAPPINGS[class_type]
    declared = node_class.INPUT_TYPES()
    assert set(declared) <= {"required", "optional", "hidden"} and declared["required"]
    for name, spec in _input_specs(node_class).items():
        assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, name
        kind, options = spec[0], (spec[1] if len(spec) == 2 else {})
        if isinstance(kind, list):  # a combo: its default is one of its choices
            assert kind and all(isinstance(choice, str) for choice in kind), name
            assert options.get("default", kind[0]) in kind, name
        else:
            assert kind in WIDGETS + SOCKETS, (name, kind)
        if kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
            if kind == "INT":
                assert all(isinstance(options[key], int) for key in ("min", "default", "max")), name
        if kind == "BOOLEAN":
            assert isinstance(options["default"], bool), name

    # FUNCTION takes exactly the inputs: the required ones without a default, the optional ones with one.
    parameters = inspect.signature(getattr(node_class, node_class.FUNCTION)).parameters
    names = [name for name in parameters if name != "self"]
    assert set(names) == set(_input_specs(node_class))
    for name in declared["required"]:
        assert parameters[name].default is inspect.Parameter.empty, name
    for name in declared.get("optional", {}):
        assert parameters[name].default is not inspect.Parameter.empty, name
    assert len(node_class.RETURN_TYPES) == len(node_class.RETURN_NAMES)
    assert all(kind in SOCKETS + WIDGETS for kind in node_class.RETURN_TYPES)
    assert node_class.CATEGORY == "Leffa" and node_class.DESCRIPTION
    assert NODE_DISPLAY_NAME_MAPPINGS[class_type]


@pytest.mark.parametrize("workflow", sorted(path.name for path in WORKFLOWS.glob("*.json")))
def test_every_example_workflow_links_outputs_to_inputs_of_their_type(workflow):
    graph = json.loads((WORKFLOWS / workflow).read_text())
    for key, node in graph.items():
        inputs, _ = _declared(node["class_type"])
        assert set(node["inputs"]) <= set(inputs), (key, set(node["inputs"]) - set(inputs))
        if node["class_type"] in NODE_CLASS_MAPPINGS:
            required = NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()["required"]
            assert set(required) <= set(node["inputs"]), (key, set(required) - set(node["inputs"]))
        for name, value in node["inputs"].items():
            kind = inputs[name]
            if isinstance(value, list):
                source, index = value
                assert _declared(graph[source]["class_type"])[1][index] == kind, (key, name)
            elif isinstance(kind, list):
                assert value in kind, (key, name, value)
            else:
                assert kind in WIDGETS, (key, name, "a socket needs a link")


# ------------------------------------------------------------------------------------------ running
@pytest.fixture(scope="module")
def demo_runtime() -> Runtime:
    return tiny_runtime(device="cpu")


def test_the_demo_workflow_gives_what_the_python_api_gives(demo_runtime, monkeypatch):
    graph = json.loads((WORKFLOWS / "tryon_demo_api.json").read_text())
    graph["8"]["inputs"]["steps"] = 10
    monkeypatch.setattr(leffa_nodes, "tiny_runtime", lambda **options: demo_runtime)
    saved, previewed = _Output(), _Output()
    outputs = _run_workflow(graph, _builtins(saved, previewed))

    mask, densepose, _notes = outputs["7"]
    assert mask.shape == (1, 128, 96) and densepose.shape == (1, 128, 96, 3)
    example_mask = np.asarray(Image.open(EXAMPLES / "mask_00.png").convert("L")) > 127
    extended, _ = adjust_mask(example_mask, MaskAdjustments(extend_down=6), None, "upper_body")
    assert np.array_equal(mask[0].numpy() > 0.5, extended) and extended.sum() > example_mask.sum()
    assert torch.equal(densepose, _load_image("densepose_00.png")[0])

    # The README's Python API on the demo model, with the extended mask: the same pixels.
    model = LeffaModel.from_pretrained(REPO_ROOT / "assets" / "demo-model" / "virtual_tryon")
    person, box = letterbox(Image.open(EXAMPLES / "person_00.png"), size=(96, 128))
    garment, _ = letterbox(Image.open(EXAMPLES / "garment_01.png"), size=(96, 128))
    out = LeffaPipeline(model)(
        person, garment, Image.fromarray(extended.astype(np.uint8) * 255), Image.open(EXAMPLES / "densepose_00.png"),
        num_inference_steps=10, guidance_scale=2.5, seed=42, repaint=True,
    )
    expected = np.asarray(crop_back(out[0], box).convert("RGB"))
    (result,) = saved.saved
    assert result.shape == (1, 128, 96, 3)
    assert np.array_equal(np.round(result[0].numpy() * 255).astype(np.uint8), expected)

    heatmap, marked, flow, warped, layers, caption = outputs["10"]
    assert previewed.saved == [heatmap] and heatmap.shape[0] == 1
    assert flow.shape == warped.shape == (1, 128, 96, 3) and layers.shape[0] == 7
    assert "point (48, 52) of the result takes from" in caption and "**" not in caption
    generation = outputs["8"][1].generations[0]
    looked_at = generation.trace.flow_at((48, 52), *generation.trace.default_view)
    assert f"takes from ({looked_at[0]:.0f}, {looked_at[1]:.0f})" in caption


def _with_fake_preprocessing(runtime: Runtime, monkeypatch) -> Runtime:
    """The demo runtime with the service tests' stand-in parsing, OpenPose and DensePose models."""
    store = runtime.store
    monkeypatch.setattr(store, "preprocessing", True)
    monkeypatch.setattr(store, "parser", lambda status=None: FakeParser())
    monkeypatch.setattr(store, "openpose", lambda status=None: FakeOpenPose())
    monkeypatch.setattr(store, "densepose", lambda status=None: FakeDensePose())
    return runtime


@pytest.mark.parametrize("workflow, generating", [
    ("tryon_released_api.json", "6"), ("pose_transfer_released_api.json", "4"),
])
def test_the_released_workflows_run_with_the_models_they_name_standing_in(workflow, generating, demo_runtime,
                                                                          monkeypatch):
    """The released workflows on the demo model with stand-in preprocessing: the mask and DensePose made
    from the photo, the result and the attention map of the same shapes as the photo."""
    graph = json.loads((WORKFLOWS / workflow).read_text())
    loader = graph["1"]["inputs"]
    assert loader["weights"] == "released" and loader["download"] is True
    calls = []

    def released(folder, **options):
        calls.append(options)
        return _with_fake_preprocessing(demo_runtime, monkeypatch)

    monkeypatch.setattr(leffa_nodes, "released_runtime", released)
    graph[generating]["inputs"]["steps"] = 3
    attention = next(key for key, node in graph.items() if node["class_type"] == "LeffaAttentionMap")
    graph[attention]["inputs"].update(x=40, y=60)
    saved, previewed = _Output(), _Output()
    outputs = _run_workflow(graph, _builtins(saved, previewed))
    assert calls == [dict(device="auto", dtype="auto", download=True, memory="auto")]
    (result,) = saved.saved
    run = outputs[generating][1]
    width, height = run.generations[0].image.size
    assert result.shape == (1, height, width, 3) and float(result.std()) > 0.01
    assert run.generations[0].trace is not None
    assert "point (40, 60) of the result" in outputs[attention][-1]
    if workflow.startswith("tryon"):
        mask = outputs["4"][0]
        assert mask.shape == (1, 128, 96) and 0.05 < float(mask.mean()) < 0.9
        assert (height, width) == (128, 96)
    else:  # the stand-in DensePose charts a small person, so auto-crop generates its cut of the target
        assert (height, width) < (128, 96) and "auto-crop" in run.generations[0].prepared.notes[0]


# ------------------------------------------------------------------------------ batches, errors, progress
def _image(name: str) -> torch.Tensor:
    return _load_image(name)[0]


def _try_on(runtime, person, garment, **options):
    settings = dict(model_type="viton_hd", category="upper_body", steps=2, guidance=2.5, seed=7, num_images=1,
                    ref_acceleration=False, record_attention=False)
    return leffa_nodes.LeffaTryOn().try_on(runtime, person, garment, **{**settings, **options})


def test_one_garment_goes_on_each_person_of_a_batch(demo_runtime):
    persons = torch.cat([_image("person_00.png"), _image("person_01.png")])
    masks = torch.cat([_image("mask_00.png"), _image("mask_01.png")])[..., 0]
    denseposes = torch.cat([_image("densepose_00.png"), _image("densepose_01.png")])
    images, run = _try_on(demo_runtime, persons, _image("garment_02.png"), mask=masks, densepose=denseposes,
                          num_images=2)
    assert images.shape == (4, 128, 96, 3) and len(run.generations) == 2
    alone, _ = _try_on(demo_runtime, persons[1:], _image("garment_02.png"), mask=masks[1:], densepose=denseposes[1:],
                       num_images=2)
    assert torch.equal(images[2:], alone)  # the second person's two images (seeds 7, 8), as made alone
    assert not torch.equal(images[0], images[1])


def test_bad_inputs_get_the_projects_messages(demo_runtime):
    person, garment = _image("person_00.png"), _image("garment_01.png")
    mask, densepose = _image("mask_00.png")[..., 0], _image("densepose_00.png")
    with pytest.raises(ValueError, match="the batches do not match"):
        _try_on(demo_runtime, torch.cat([person] * 2), torch.cat([garment] * 3), mask=mask, densepose=densepose)
    with pytest.raises(ValueError, match=r"person must be an IMAGE \(batch, height, width, 3 channels\)"):
        _try_on(demo_runtime, person[0], garment, mask=mask, densepose=densepose)
    with pytest.raises(ValueError, match="garment: contains NaN or infinite values"):
        _try_on(demo_runtime, person, garment * float("nan"), mask=mask, densepose=densepose)
    with pytest.raises(ValueError, match="the mask is empty"):
        _try_on(demo_runtime, person, garment, mask=torch.zeros_like(mask), densepose=densepose)
    with pytest.raises(ValueError, match="model must come from the 'Load Leffa model' node"):
        _try_on("ckpts/virtual_tryon.pth", person, garment)
    with pytest.raises(PreprocessingUnavailableError, match="connect a 'mask' and a 'densepose' to this node"):
        _try_on(demo_runtime, person, garment)
    with pytest.raises(PreprocessingUnavailableError, match="connect a 'mask' and a 'densepose' to this node"):
        leffa_nodes.LeffaMakeMask().make_mask(demo_runtime, person, "viton_hd", "upper_body", "auto", 0, 0, 0, 0, 0,
                                              True, True, False)
    _, run = _try_on(demo_runtime, person, garment, mask=mask, densepose=densepose)
    attention = leffa_nodes.LeffaAttentionMap()
    with pytest.raises(ValueError, match="made without recording attention: turn 'record_attention' on"):
        attention.attention_map(run, 10, 10)
    _, recorded = _try_on(demo_runtime, person, garment, mask=mask, densepose=densepose, record_attention=True)
    with pytest.raises(ValueError, match=r"point \(200.0, 10.0\) lies outside the result image of 96x128"):
        attention.attention_map(recorded, 200, 10)
    with pytest.raises(ValueError, match="pair 1 is not in the run, which made 1"):
        attention.attention_map(recorded, 10, 10, pair=1)
    with pytest.raises(ValueError, match="weights must be one of released, demo"):
        leffa_nodes.LeffaModelLoader().load("mine", "cpu", "auto", "auto", False)


def test_progress_reaches_comfyuis_bar_and_its_cancel_stops_the_run(demo_runtime, monkeypatch):
    updates, cancel_after = [], []

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total):
            updates.append((value, total))

    class Interrupted(Exception):
        pass

    def throw_if_interrupted():
        if cancel_after and len(updates) >= cancel_after[0]:
            raise Interrupted

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=throw_if_interrupted)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    inputs = dict(mask=_image("mask_00.png")[..., 0], densepose=_image("densepose_00.png"), steps=4)
    _try_on(demo_runtime, _image("person_00.png"), _image("garment_01.png"), **inputs)
    assert updates[-1] == (1000, 1000) and (500, 1000) in updates

    updates.clear()
    cancel_after.append(3)
    with pytest.raises(Interrupted):
        _try_on(demo_runtime, _image("person_00.png"), _image("garment_01.png"), **inputs)
    assert max(value for value, _ in updates) < 1000


def test_the_loaders_memory_level_is_the_level_every_run_uses():
    (runtime,) = leffa_nodes.LeffaModelLoader().load("demo", "cpu", "fp32", "model_offload", False)
    _, run = _try_on(runtime, _image("person_00.png"), _image("garment_01.png"), mask=_image("mask_00.png")[..., 0],
                     densepose=_image("densepose_00.png"))
    assert runtime.memory == "model_offload" and run.generations[0].memory_level == "model_offload"
