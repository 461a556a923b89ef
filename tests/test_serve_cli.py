"""``pancapchain serve`` refuses bad arguments with one line before starting anything (no server here)."""

from __future__ import annotations

import sys

from pancapchain.cli import main as cli_main
from pancapchain.cli.serve import MISSING_GRADIO


def test_missing_gradio_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` sees on a core install
    assert cli_main(["serve", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == MISSING_GRADIO
    assert "pancapchain[demo]" in MISSING_GRADIO


def test_model_that_is_not_a_checkpoint_or_bad_numbers(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert f"--model {tmp_path / 'nope'} is not a directory" in capsys.readouterr().err
    assert cli_main(["serve", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert "--port 70000 is not a TCP port" in capsys.readouterr().err
    assert cli_main(["serve", "--model", str(tmp_path)]) == 2
    assert f"cannot load --model {tmp_path}" in capsys.readouterr().err
