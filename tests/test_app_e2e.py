"""The app served on localhost with the tiny model, driven through its API with gradio_client."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import psutil
import pytest
from PIL import Image

from tests.app_server import SERVED_SIZE, served_app
from tests.conftest import REPO_ROOT

gradio_client = pytest.importorskip("gradio_client")
AppError = gradio_client.exceptions.AppError
handle_file = gradio_client.handle_file
# Gradio's queue statistics use a pandas option that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")


@pytest.fixture(scope="module")
def server():
    with served_app() as served:
        yield served


@pytest.fixture()
def client(server):
    """A fresh client per test: its own session, so no state leaks between tests."""
    return gradio_client.Client(server[0], verbose=False)


def _example(server, index=0) -> dict:
    example = server[1].tryon_examples[index]
    return dict(
        person=handle_file(str(example.person)), garment=handle_file(str(example.garment)),
        mask=handle_file(str(example.mask)), densepose=handle_file(str(example.densepose)),
    )


def _blank_png(path: Path, width: int, height: int) -> Path:
    """A black greyscale PNG written row by row: a few hundred KB on disk, never held decoded in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(width + 1)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def _peak_rss_growth(call) -> tuple[int, BaseException | None]:
    """Run ``call`` while sampling this process's resident memory; (peak growth in bytes, its error)."""
    process, peak, done = psutil.Process(), [0], threading.Event()
    baseline = process.memory_info().rss

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss - baseline)
            done.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        call()
    except Exception as error:  # the call is expected to fail; its message is checked by the caller
        return peak[0], error
    finally:
        done.set()
        sampler.join()
    return peak[0], None


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
def test_api_endpoints_and_outputs_have_meaningful_names(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/make_mask", "/try_on", "/pose_transfer", "/inspect"}
    inspector = [
        "Inspected run", "Result: click a point", "Attention heatmap (ring: where the pixel takes from; dotted: sinks)",
        "Heatmap colour scale",
        "Heatmap per layer (ring: that layer's point): peak (× uniform) and entropy (1 = uniform) tell sharp "
        "layers from diffuse",
        "Flow (colour wheel)", "Reference warped by the flow", "What is shown",
    ]
    returns = {name: [item["label"] for item in endpoint["returns"]] for name, endpoint in endpoints.items()}
    assert returns["/make_mask"] == [
        "Mask editor: brush adds, eraser removes; then press Try on", "Previews", "Model status", "Notes",
    ]
    assert returns["/try_on"] == [
        "Mask editor: brush adds, eraser removes; then press Try on", "Result", "Seed used", "Previews",
        "Model status", "Layer", "Timestep", *inspector, "All images of the run", "Notes",
    ]
    assert returns["/pose_transfer"][0] == "Result (untrained model: noise)"
    assert returns["/inspect"] == inspector[1:]
    parameters = [item["parameter_name"] for item in endpoints["/try_on"]["parameters"]]
    assert parameters[-8:] == [
        "steps", "guidance", "seed", "ref_acceleration", "record_attention", "num_images", "memory", "edited_mask",
    ]
    assert returns["/pose_transfer"][-2:] == ["All images of the run", "Notes"]
    adjustments = ["auto_crop", "grow", "extend_up", "extend_down", "extend_left", "extend_right", "keep_hands",
                   "keep_face", "cover_legs"]
    assert parameters[8:17] == adjustments
    assert [item["parameter_name"] for item in endpoints["/make_mask"]["parameters"]][8:] == adjustments
    assert [item["parameter_name"] for item in endpoints["/pose_transfer"]["parameters"]][4] == "auto_crop"


def test_the_mask_brush_covers_a_sleeve_in_a_few_strokes(client):
    from leffa.app.callbacks import editor_brush_size

    (editor,) = [c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "mask-editor"]
    assert editor["props"]["brush"]["default_size"] == editor_brush_size(SERVED_SIZE) == 4
    assert editor["props"]["eraser"]["default_size"] == 4
    assert editor_brush_size((96, 128)) == 6 and editor_brush_size((768, 1024)) == 48


@pytest.mark.slow
def test_try_on_then_inspect(client, server):
    example = server[1].tryon_examples[0]
    width, height = SERVED_SIZE
    editor, gallery, status, notes = client.predict(**_example(server), api_name="/make_mask")
    assert _size(editor["background"]) == (width, height)
    assert [_size(layer) for layer in editor["layers"]] == [(width, height)]
    assert [item["caption"] for item in gallery] == ["mask", "DensePose"]
    assert "device cpu" in status

    outputs = client.predict(
        **_example(server), steps=2, seed=11, record_attention=True, edited_mask=None, api_name="/try_on"
    )
    editor, result, seed, previews, status, layers, timesteps, run = outputs[:8]
    inspected, heatmap, scale, per_layer, flow, warped, caption, several, notes = outputs[8:]
    assert _size(editor["background"]) == (width, height)  # the mask used, ready for editing
    assert _size(result) == Image.open(example.person).size  # cropped back to the photo's framing
    assert seed == "11" and heatmap is None and scale == "" and "click the result" in caption
    assert several == {"__type__": "update", "visible": False, "value": []}  # the gallery shows for several only
    assert run.startswith("Showing the try-on result of ") and run.endswith("(seed 11).")
    factor = -(-512 // _size(result)[1])  # the clickable result is enlarged to at least 512 pixels tall
    assert _size(inspected) == (_size(result)[0] * factor, _size(result)[1] * factor)
    recorded_layers = [value for _, value in layers["choices"]]
    assert recorded_layers[:2] == ["trained", "all"] and layers["value"] == "trained" and len(recorded_layers) > 3
    assert all(re.fullmatch(r"(down \d+|mid|up \d+)(\.\d+)? · \d+×\d+", label) for label, _ in layers["choices"][2:])
    assert _size(flow) == (width, height) and _size(warped) == (width, height)

    layer = recorded_layers[3]
    label = layers["choices"][3][0]
    timestep = timesteps["choices"][2][1]
    marked, heatmap, scale, per_layer, flow, warped, caption = client.predict(
        x=5, y=10, layer=layer, timestep=timestep, api_name="/inspect"
    )
    margin = 2 * (min(width, height) // 12 + 2 * max(1, min(width, height) // 96) + 1)  # the ring's frame
    assert _size(marked) == _size(inspected) and _size(heatmap) == (width + margin, height + margin)
    assert "1× = uniform" in scale and "This view's peak is" in scale
    assert [item["caption"].split(":")[0] for item in per_layer] == [label for label, _ in layers["choices"][2:]]
    assert all("peak" in item["caption"] and "entropy" in item["caption"] for item in per_layer)
    assert label in caption and f"t = {timestep}" in caption and "point (5, 10)" in caption


@pytest.mark.slow
def test_the_readme_api_example(client, server):
    example = server[1].tryon_examples[0]
    outputs = client.predict(
        person=handle_file(str(example.person)), garment=handle_file(str(example.garment)), steps=2, seed=42,
        record_attention=True, api_name="/try_on",
        mask=handle_file(str(example.mask)), densepose=handle_file(str(example.densepose)),
    )
    result_path, seed_used = outputs[1], outputs[2]
    assert _size(result_path) == Image.open(example.person).size and seed_used == "42"
    marked, heatmap, colour_scale, per_layer, flow, warped, caption = client.predict(
        x=40, y=60, layer="all", timestep="all", api_name="/inspect"
    )
    assert "point (40, 60) of the result takes from (" in caption and "(ring)" in caption


@pytest.mark.slow
def test_pose_transfer(client, server):
    target = server[1].pose_examples[0]
    outputs = client.predict(
        person=handle_file(str(target.person)), target=handle_file(str(target.target)),
        densepose=handle_file(str(target.densepose)), steps=1, seed=3, api_name="/pose_transfer",
    )
    result, seed, previews = outputs[:3]
    assert _size(result) == Image.open(target.target).size and seed == "3"
    assert [item["caption"] for item in previews] == ["DensePose"]


@pytest.mark.slow
def test_several_images_come_back_in_the_gallery_with_their_seeds(client, server):
    outputs = client.predict(
        **_example(server), steps=1, seed=20, num_images=3, memory="model_offload", record_attention=True,
        edited_mask=None, api_name="/try_on",
    )
    result, seed, status, run, update = outputs[1], outputs[2], outputs[4], outputs[7], outputs[-2]
    several = update["value"]
    assert update["visible"] and seed == "20, 21, 22"
    assert [item["caption"] for item in several] == ["seed 20", "seed 21", "seed 22"]
    assert all(_size(item["image"]) == _size(result) for item in several)
    assert Image.open(several[0]["image"]).tobytes() == Image.open(result).tobytes()
    assert "(memory: model_offload)" in status and run.endswith("(seed 20).")  # the inspector shows the first
    with pytest.raises(AppError, match="num_images must be between 1 and 4, got 5"):
        client.predict(**_example(server), steps=1, num_images=5, edited_mask=None, api_name="/try_on")
    with pytest.raises(AppError, match=r"fp4 is not in the list of choices: \['auto', 'none', 'model_offload'"):
        client.predict(**_example(server), steps=1, memory="fp4", edited_mask=None, api_name="/try_on")


@pytest.mark.slow
def test_errors_come_back_as_errors(client, server, tmp_path):
    files = _example(server)
    too_small = tmp_path / "too-small.png"
    Image.new("RGB", (20, 20), "white").save(too_small)
    with pytest.raises(AppError, match="no person photo"):
        client.predict(**{**files, "person": None}, edited_mask=None, api_name="/try_on")
    with pytest.raises(AppError, match="^steps must be between 1 and 100, got 0$"):  # the slider's own bounds
        client.predict(**files, steps=0, edited_mask=None, api_name="/try_on")
    with pytest.raises(AppError, match="^guidance must be between 0 and 10, got -1$"):
        client.predict(**files, guidance=-1, edited_mask=None, api_name="/try_on")
    with pytest.raises(AppError, match="^steps must be between 1 and 100, got 0$"):
        client.predict(person=files["person"], target=files["person"], densepose=files["densepose"], steps=0,
                       api_name="/pose_transfer")
    with pytest.raises(AppError, match="seed must be -1"):
        client.predict(**files, seed=-5, edited_mask=None, api_name="/try_on")
    with pytest.raises(AppError, match="generate a result first"):
        client.predict(x=1, y=1, api_name="/inspect")
    with pytest.raises(AppError, match="at least 64 pixels"):
        client.predict(**{**files, "garment": handle_file(str(too_small))}, edited_mask=None, api_name="/try_on")


@pytest.mark.slow
def test_unreadable_uploads_and_wrong_types_get_the_projects_messages(client, server, tmp_path):
    files = _example(server)
    not_an_image = tmp_path / "holiday.jpg"
    not_an_image.write_bytes(b"this is a text file, not a photo")
    unreadable = handle_file(str(not_an_image))
    cases = [
        ({"person": unreadable}, "^holiday.jpg is not an image file PIL can read"),
        ({"mask": unreadable}, "^holiday.jpg is not an image file PIL can read"),
        ({"edited_mask": {"background": None, "layers": [unreadable], "composite": None}}, "^holiday.jpg is not an"),
        ({"steps": "thirty"}, r"^steps \(num_inference_steps\) must be a number, got 'thirty'$"),
        ({"seed": "lucky"}, "^seed must be a number, got 'lucky'$"),
        ({"guidance": None}, r"^guidance \(guidance_scale\) must be a number, got None$"),
        ({"repaint": "no"}, "^repaint must be true or false, got 'no'$"),
        ({"record_attention": "yes"}, "^record_attention must be true or false, got 'yes'$"),
        ({"edited_mask": "abc"}, "^edited_mask must be the mask editor's value, a dict with 'background'"),
        ({"edited_mask": [1]}, "^edited_mask must be the mask editor's value"),
    ]
    # A flag is a boolean: "false" is not read as true (it gave the same image as True), nor is "x", 0 or [1].
    for value in ("false", "x", None, 0, [1]):
        cases.append(({"garment_png": value}, f"^garment_png must be true or false, got {re.escape(repr(value))}$"))
    for change, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(**{**files, "steps": 1, "edited_mask": None, **change}, api_name="/try_on")
    with pytest.raises(AppError, match="^garment_png must be true or false, got 'false'$"):
        client.predict(**{**files, "garment_png": "false"}, api_name="/make_mask")
    with pytest.raises(AppError, match=r"^steps \(num_inference_steps\) must be a number, got 'x'$"):
        client.predict(
            person=files["person"], target=files["person"], densepose=files["densepose"], steps="x",
            api_name="/pose_transfer",
        )


@pytest.mark.slow
def test_huge_upload_is_refused_from_its_header_without_decoding(client, server, tmp_path):
    files = _example(server)
    bomb = handle_file(str(_blank_png(tmp_path / "huge.png", 10_000, 10_000)))  # 100 MP, ~100 KB
    large = handle_file(str(_blank_png(tmp_path / "large.png", 8_000, 6_000)))  # 48 MP

    growth, error = _peak_rss_growth(
        lambda: client.predict(**{**files, "person": bomb}, api_name="/make_mask")
    )
    assert growth < 50 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MB"
    assert isinstance(error, AppError) and str(error).startswith("huge.png is too large to decode safely")
    with pytest.raises(AppError, match="48.0 megapixels, more than the limit of 40.0; downscale it first"):
        client.predict(**{**files, "garment": large}, api_name="/make_mask")


@pytest.mark.slow
def test_error_texts_come_back_plain(client, server):
    client.predict(**_example(server), steps=1, seed=1, record_attention=True, edited_mask=None, api_name="/try_on")
    for x, message in ((None, "^x must be a number, got None$"), ("abc", "^x must be a number, got 'abc'$")):
        with pytest.raises(AppError, match=message):
            client.predict(x=x, y=1, layer="all", timestep="all", api_name="/inspect")
    with pytest.raises(AppError, match=r"^y must be a number, got \[1\]$"):
        client.predict(x=1, y=[1], layer="all", timestep="all", api_name="/inspect")
    with pytest.raises(AppError) as info:
        client.predict(x=1, y=1, layer="all", timestep="late", api_name="/inspect")
    assert str(info.value).startswith("timestep must be 'trained', 'all' or one of [")  # not &#x27;all&#x27;


def test_missing_weights_without_download_fall_back_to_the_tiny_model(tmp_path, monkeypatch):
    import app
    import leffa.app.runtime

    monkeypatch.setattr(app, "tiny_runtime", lambda **options: ("tiny", options))
    monkeypatch.setattr(leffa.app.runtime.hub_constants, "HF_HUB_OFFLINE", False)
    args = app.parse_args(["--ckpt-dir", str(tmp_path), "--no-download", "--device", "cpu"])
    kind, options = app.make_runtime(args)
    assert kind == "tiny" and options["device"] == "cpu"
    assert "virtual_tryon.pth" in options["notice"]
    assert "python -m leffa download virtual_tryon" in options["notice"]
    assert app.make_runtime(app.parse_args(["--tiny"]))[0] == "tiny"
    assert options["memory"] == "auto" and app.make_runtime(app.parse_args(["--tiny", "--offload"]))[1]["memory"] == "model_offload"
    released = app.make_runtime(argparse.Namespace(**{**vars(args), "no_download": False, "memory": "int8"}))
    assert not released.tiny and released.memory == "int8" and released.store.download
    assert "downloaded on first use" in released.notice
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    defaults = app.parse_args([])
    assert defaults.host == "127.0.0.1" and not defaults.share and defaults.port is None and not defaults.tiny
    monkeypatch.setattr(leffa.app.runtime.hub_constants, "HF_HUB_OFFLINE", True)
    offline = app.parse_args(["--ckpt-dir", str(tmp_path)])
    assert app.make_runtime(offline)[0] == "tiny"  # offline counts as no download
    with pytest.raises(SystemExit) as info:
        app.parse_args(["--device", "tpu"])
    assert info.value.code == 2
    with pytest.raises(ValueError, match="--offload means --memory model_offload, but --memory int8 was given too"):
        app.make_runtime(app.parse_args(["--tiny", "--offload", "--memory", "int8"]))


def _components(runtime) -> list[dict]:
    """The page's components as Gradio sends them to the browser (type and props)."""
    from app import build_app

    return build_app(runtime).get_config_file()["components"]


def _find(components: list[dict], *, elem_id: str | None = None, label: str | None = None) -> dict | None:
    for component in components:
        props = component["props"]
        if (elem_id is not None and props.get("elem_id") == elem_id) or (
            label is not None and str(props.get("label", "")).startswith(label)
        ):
            return props
    return None


def test_the_tiny_page_keeps_the_background_and_offers_only_the_trained_size(tiny_model):
    from leffa.app.runtime import single_model_runtime

    page = _components(single_model_runtime(tiny_model, SERVED_SIZE, []))
    assert _find(page, label="Repaint")["value"] is True
    assert [tuple(choice) for choice in _find(page, label="Resolution")["choices"]] == [("64×48", "full")]
    assert "trained at only" in _find(page, label="Resolution")["info"]
    assert _find(page, elem_id="tryon-seed")["value"] == "" and _find(page, elem_id="pose-seed")["value"] == ""
    assert _find(page, elem_id="pose-untrained")["value"].startswith("**Untrained for pose transfer**")
    assert _find(page, elem_id="pose-result")["label"] == "Result (untrained model: noise)"

    trained = _components(single_model_runtime(tiny_model, SERVED_SIZE, [], untrained=frozenset()))
    assert _find(trained, elem_id="pose-untrained") is None
    assert _find(trained, elem_id="pose-result")["label"] == "Result"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_without_weights_names_the_missing_files_on_the_page(tmp_path, monkeypatch, tiny_model):
    import app
    import leffa.app.runtime

    def tiny_runtime(notice: str = "", **options):
        return leffa.app.runtime.single_model_runtime(tiny_model, SERVED_SIZE, [], notice)

    monkeypatch.setattr(app, "tiny_runtime", tiny_runtime)

    recipe = subprocess.run(
        ["make", "-n", "demo", f"CKPT_DIR={tmp_path}"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    without_weights = recipe.split("else", 1)[1]
    command = re.search(r"app\.py (.*?) ?;", without_weights)[1]
    monkeypatch.setattr(leffa.app.runtime.hub_constants, "HF_HUB_OFFLINE", False)
    runtime = app.make_runtime(app.parse_args(shlex.split(command)))
    status = _find(_components(runtime), elem_id="model-status")["value"]
    assert runtime.tiny and str(tmp_path / "virtual_tryon.pth") in status
    assert f"python -m leffa download virtual_tryon --ckpt-dir {tmp_path}" in status


def test_a_busy_port_is_named_with_another_to_choose_before_any_model_loads(monkeypatch, capsys):
    import socket

    import app

    monkeypatch.setattr(app, "make_runtime", lambda args: pytest.fail("no model may load for a busy port"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert app.main(["--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: port {port} on 127.0.0.1 is taken") and f"--port {port + 1}" in error
    assert app.main(["--host", "203.0.113.7", "--port", "7860"]) == 2  # not an address of this machine
    assert "give --host an address of this machine" in capsys.readouterr().err
