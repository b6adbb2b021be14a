"""``python -m leffa convert``: strict check, safetensors copy, fp16 option, errors and exit codes."""

from __future__ import annotations

import pytest
import torch

from leffa.app.cli import EXIT_ERROR, EXIT_OK, main
from leffa.core.serialization import read_state_dict, save_state_dict


def test_convert_writes_fp16_safetensors(tiny_model, tmp_path, capsys):
    src = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.pth")
    out = tmp_path / "tiny.safetensors"
    assert main(["convert", str(src), str(out), "--fp16"]) == EXIT_OK
    state = read_state_dict(out)
    assert set(state) == set(tiny_model.state_dict())
    assert all(t.dtype == torch.float16 for t in state.values())
    assert "tiny, " in capsys.readouterr().out


def test_convert_refuses_mismatched_checkpoint(tiny_model, tmp_path, capsys):
    state = dict(tiny_model.state_dict())
    state.pop("unet.conv_out.bias")
    src = save_state_dict(state, tmp_path / "bad.pth")
    assert main(["convert", str(src), str(tmp_path / "out.safetensors")]) == EXIT_ERROR
    assert "missing keys: unet.conv_out.bias" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_missing_file_and_bad_arguments(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "x.safetensors")]) == EXIT_ERROR
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["convert"])
    assert info.value.code == 2
