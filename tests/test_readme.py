"""The README's examples for the built-in demo model run as written (the released-weights examples need
weights this machine does not have; their code paths are tested on tiny models elsewhere)."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from PIL import Image

from leffa.app.cli import EXIT_OK, main
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


@pytest.fixture()
def in_a_folder_with_the_assets(tmp_path, monkeypatch):
    """A working folder of the user's own, where the README's relative asset paths resolve."""
    (tmp_path / "assets").symlink_to(REPO_ROOT / "assets")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_python_example_on_the_demo_model(in_a_folder_with_the_assets):
    (code,) = [text for language, text in BLOCKS if language == "python" and "assets/demo-model" in text]
    exec(compile(code, "README.md", "exec"), {})
    result = Image.open(in_a_folder_with_the_assets / "result.png")
    assert result.size == Image.open(REPO_ROOT / "assets" / "examples" / "person_00.png").size


@pytest.mark.slow
def test_the_command_line_examples_on_the_demo_model(in_a_folder_with_the_assets):
    lines = [
        line for language, text in BLOCKS if language == "bash" for line in text.splitlines()
        if line.startswith("python -m leffa ") and "--tiny" in line
    ]
    assert {shlex.split(line)[3] for line in lines} == {"tryon", "trace", "pose-transfer"}
    for line in lines:
        assert main([*shlex.split(line)[3:], "--steps", "2", "--device", "cpu"]) == EXIT_OK, line
    (trace,) = (in_a_folder_with_the_assets / "outputs" / "trace").glob("*/trace.json")
    summary = json.loads(trace.read_text())
    assert summary["points"] == [[48.0, 52.0]] and len(summary["peaks"]) == 1
