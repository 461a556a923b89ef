"""``pancapchain serve`` refuses bad arguments with one line before starting anything (no server here)."""

from __future__ import annotations

import sys

from pancapchain.cli import main as cli_main
from pancapchain.cli.serve import MISSING_GRADIO


def test_missing_gradio_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` sees on a core install
    for name in ("pancap_meta.json", "config.json"):  # passes the pre-flight check of an export
        (tmp_path / name).write_text("{}")
    assert cli_main(["serve", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == MISSING_GRADIO
    assert "pancapchain[demo]" in MISSING_GRADIO


def test_model_that_is_not_a_checkpoint_or_bad_numbers(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"pancapchain serve: error: --model {tmp_path / 'nope'} does not exist (check the path)\n"
    assert cli_main(["serve", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert capsys.readouterr().err == "pancapchain serve: error: --port 70000 is not a TCP port (1-65535)\n"
    assert cli_main(["serve", "--model", str(tmp_path)]) == 2
    assert f"pancapchain serve: error: --model {tmp_path}: not a pancapchain checkpoint" in capsys.readouterr().err
