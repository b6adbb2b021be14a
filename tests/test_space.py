"""The app started the way a Hugging Face Space starts it: ``python app.py`` (no Makefile) with the environment
Spaces set, the ``spaces`` package importable (a stand-in that logs what its GPU decorator wraps and runs), and
the README's front matter, which Spaces read, true to the pins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from PIL import Image

from tests.app_server import free_port
from tests.conftest import REPO_ROOT, requirement_pins

gradio_client = pytest.importorskip("gradio_client")
#: The app's functions that run a model on the device: each must ask ZeroGPU for the GPU.
GENERATING = {"make_mask", "try_on", "pose_transfer"}
STAND_IN_SPACES = '''
"""Stand-in for Hugging Face's ``spaces`` package: ``GPU`` logs each function it wraps and each call;
``gradio_auto_wrap``, which gradio applies on a Space to every event function, leaves them as they are."""
import functools
import json
import os


def _log(event, name):
    with open(os.environ["LEFFA_TEST_SPACES_LOG"], "a") as log:
        log.write(json.dumps([event, name]) + "\\n")


def GPU(function=None, *, duration=60):
    def wrap(function):
        _log("wraps", function.__name__)

        @functools.wraps(function)
        def on_gpu(*args, **kwargs):
            _log("runs", function.__name__)
            return function(*args, **kwargs)

        return on_gpu

    return wrap(function) if callable(function) else wrap


def gradio_auto_wrap(function):
    return function
'''


def _front_matter() -> dict:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Space's front matter"
    return yaml.safe_load(match[1])


def test_the_front_matter_names_the_pinned_gradio_and_the_app():
    front = _front_matter()
    assert front["sdk"] == "gradio" and front["sdk_version"] == requirement_pins(REPO_ROOT / "requirements.txt")["gradio"]
    assert (REPO_ROOT / front["app_file"]).is_file() and front["app_file"] == "app.py"
    assert len(front["short_description"]) <= 60  # the Hub refuses longer ones
    required = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO_ROOT / "pyproject.toml").read_text())
    major, minor = (int(part) for part in str(front["python_version"]).split("."))
    assert (major, minor) >= (int(required[1]), int(required[2]))


def _wait_for_page(url: str, app: subprocess.Popen, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.poll() is not None:
            pytest.fail(f"python app.py exited with {app.returncode}:\n{app.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the page at {url} did not answer within {timeout:.0f} s")


@pytest.mark.slow
def test_python_app_py_starts_as_on_a_space_and_answers_an_api_call(tmp_path):
    (tmp_path / "modules" / "spaces").mkdir(parents=True)
    (tmp_path / "modules" / "spaces" / "__init__.py").write_text(STAND_IN_SPACES)
    (tmp_path / "ckpts").mkdir()
    log = tmp_path / "spaces.log"
    port = free_port()
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("GRADIO_")},
        # What a Space sets (SPACE_ID and the server address are what the app and gradio read).
        "SPACE_ID": "leffa-tests/leffa", "SPACE_AUTHOR_NAME": "leffa-tests", "SPACE_REPO_NAME": "leffa",
        "SYSTEM": "spaces", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
        # Here: no Hub (so the app serves the demo model and says why), the stand-in `spaces`, no analytics.
        "HF_HUB_OFFLINE": "1", "LEFFA_CKPT_DIR": str(tmp_path / "ckpts"), "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": str(tmp_path / "modules"), "LEFFA_TEST_SPACES_LOG": str(log), "PYTHONUNBUFFERED": "1",
    }
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/", app)
        assert "<title>Leffa</title>" in page or "Leffa" in page
        wrapped = [json.loads(line) for line in log.read_text().splitlines()]
        assert {name for event, name in wrapped if event == "wraps"} == GENERATING  # exactly these, once each
        assert len(wrapped) == len(GENERATING)

        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        examples = REPO_ROOT / "assets" / "examples"
        files = {name: gradio_client.handle_file(str(examples / f"{name}_00.png"))
                 for name in ("person", "mask", "densepose")}
        outputs = client.predict(
            garment=gradio_client.handle_file(str(examples / "garment_01.png")), steps=2, seed=5,
            api_name="/try_on", **files,
        )
        with Image.open(outputs[1]) as result:
            assert result.size == Image.open(examples / "person_00.png").size
        assert outputs[2] == "5"
        calls = [json.loads(line) for line in log.read_text().splitlines()][len(wrapped):]
        assert calls == [["runs", "try_on"]]  # the call went through the GPU decorator
    finally:
        app.terminate()
        output = app.communicate(timeout=30)[0]
    assert "Until then the app runs the built-in tiny demo model" in output
    assert f"0.0.0.0:{port}" in output
