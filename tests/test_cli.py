"""Every command exits 0 on good input and 2 with one line on bad input."""

import subprocess
import sys

import pytest

import transformerkit as tk
from transformerkit.cli import main


def test_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "transformer-base" in out and "63.1M" in out and "gpt2-small" in out


def test_info_and_export(tmp_path, capsys):
    tk.save(tk.build_model(tk.preset("gpt-tiny")), tmp_path / "ckpt")
    assert main(["info", str(tmp_path / "ckpt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "norm_position" in out and "total" in out
    assert main(["export", str(tmp_path / "ckpt"), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists()


@pytest.mark.parametrize("argv", [["info", "/no/such/model"], ["export", "/no/such/model", "--to", "hf", "out"],
                                  ["no-such-command"], ["info"]])
def test_bad_input_is_one_line_and_exit_2(argv):
    result = subprocess.run([sys.executable, "-m", "transformerkit", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr
    assert "Traceback" not in result.stderr
