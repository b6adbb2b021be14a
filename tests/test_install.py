"""The project is installed in the venv (``make`` installs it editable), so its API, ``python -m leffa`` and
``train/`` work from any folder, not only from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _elsewhere(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_the_packages_import_from_another_folder(tmp_path):
    code = "import leffa, preprocess, train.config; from leffa import LeffaModel, LeffaPipeline; print(leffa.__file__)"
    result = _elsewhere(tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO_ROOT / "leffa" / "__init__.py")  # editable: the working tree


def test_the_command_line_runs_from_another_folder(tmp_path):
    result = _elsewhere(tmp_path, "-m", "leffa", "--help")
    assert result.returncode == 0 and "virtual try-on and pose transfer" in result.stdout, result.stderr
