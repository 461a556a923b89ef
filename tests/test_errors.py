"""The error policy (pancapchain.errors), the pre-flight checks and the resume marker of infer, without models."""

from __future__ import annotations

import errno
import json
import types

import pytest

from pancapchain.cli import preflight
from pancapchain.errors import (
    PreflightError,
    UserError,
    debug_requested,
    is_user_error,
    one_line,
    run_guarded,
)
from pancapchain.infer.resume import check_resumable, finished_ids, marker_path

ROW = {"id": "a", "image": "a.png", "stages": {}, "caption": "x"}


def test_project_errors_are_user_errors_by_class_name_without_imports():
    # a box error defined elsewhere (pancapchain.data.boxes.BoxFormatError) is recognised by name
    box_error = types.new_class("BoxFormatError", (ValueError,))
    box_error.__module__ = "pancapchain.data.boxes"
    assert is_user_error(box_error("box value 1.7 is outside [0, 1]"))
    assert is_user_error(FileNotFoundError(errno.ENOENT, "x", "a.txt"))
    assert is_user_error(PreflightError("x")) and isinstance(PreflightError("x"), ValueError)
    assert not is_user_error(ValueError("an internal bug")) and not is_user_error(KeyError("rle"))


def test_one_line_joins_problem_lists_and_names_the_file():
    assert one_line(ValueError("invalid recipe:\n  - a is bad\n  - b is bad")) == "invalid recipe: a is bad; b is bad"
    assert one_line(PermissionError(errno.EACCES, "Permission denied", "/x/y")) == \
        "/x/y: permission denied (check its permissions or choose another path)"


def test_run_guarded_codes_and_internal_errors_keep_their_traceback(capsys):
    def user():
        raise UserError("--x 3: must be 1")

    def interrupted():
        raise KeyboardInterrupt

    def bug():
        raise KeyError("rle")

    assert run_guarded(user, "prog") == 2
    assert capsys.readouterr().err == "prog: error: --x 3: must be 1\n"
    assert run_guarded(interrupted, "prog") == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
    with pytest.raises(KeyError):
        run_guarded(bug, "prog")
    assert run_guarded(lambda: 3, "prog") == 3


def test_debug_flag_is_taken_from_anywhere_before_a_double_dash(monkeypatch):
    monkeypatch.delenv("PANCAPCHAIN_DEBUG", raising=False)
    assert debug_requested(["infer", "--debug", "--x"]) == (["infer", "--x"], True)
    assert debug_requested(["infer", "--", "--debug"]) == (["infer", "--", "--debug"], False)
    monkeypatch.setenv("PANCAPCHAIN_DEBUG", "1")
    assert debug_requested(["infer"]) == (["infer"], True)


def test_output_checks_create_nothing(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreflightError, match="is a file, so no folder can be created"):
        preflight.output_file(tmp_path / "f" / "sub" / "out.jsonl", "--out")
    with pytest.raises(PreflightError, match="does not exist \\(create it first\\)"):
        preflight.output_file(tmp_path / "new" / "out.json", "--out", create_parents=False)
    assert preflight.output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(PreflightError, match="--tau"):
            preflight.in_range(bad, 0.0, 1.0, "--tau")


def test_safetensors_header_check_finds_truncation(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(64)}, str(path))
    assert preflight.safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert preflight.safetensors_problem(path) == f"truncated: {len(data) - 10} bytes of {len(data)}"
    path.write_bytes(data[:20])
    assert preflight.safetensors_problem(path).startswith("truncated: the header needs")
    path.write_text("hello world, not weights")
    assert "truncated" in preflight.safetensors_problem(path) or "not a safetensors" in preflight.safetensors_problem(path)


def test_resume_refuses_a_foreign_file_and_changes_nothing(tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(b'{"note": 1}\n{"note": 2}')
    with pytest.raises(UserError, match="last line is incomplete"):
        finished_ids(notes)
    notes.write_bytes(b'{"note": 1}\n')
    with pytest.raises(UserError, match="line 1 is not a prediction row"):
        finished_ids(notes)
    assert notes.read_bytes() == b'{"note": 1}\n' and not marker_path(notes).exists()


def test_resume_cuts_a_torn_line_only_in_a_marked_file(tmp_path):
    out = tmp_path / "preds.jsonl"
    assert finished_ids(out) == set() and marker_path(out).is_file()  # a new file is claimed first
    out.write_text(json.dumps(ROW) + "\n" + '{"id": "b", "sta')
    assert check_resumable(out) == "ours"
    assert finished_ids(out) == {"a"}
    assert out.read_text() == json.dumps(ROW) + "\n"
    out.write_text(out.read_text() + "my own line\n")
    with pytest.raises(UserError, match="line 2 is not JSON, so the file was changed after pancapchain wrote it"):
        finished_ids(out)


def test_a_complete_file_of_an_earlier_version_is_adopted(tmp_path):
    out = tmp_path / "old.jsonl"
    out.write_text(json.dumps(ROW) + "\n")
    assert check_resumable(out) == "legacy" and not marker_path(out).exists()
    assert finished_ids(out) == {"a"}
    assert json.loads(marker_path(out).read_text())["format"] == "pancapchain-jsonl/1"
    assert out.read_text() == json.dumps(ROW) + "\n"
    plain = tmp_path / "ids.jsonl"
    plain.write_text('{"id": "a"}\n')  # an id alone is not enough to call a file ours
    with pytest.raises(UserError, match="not a pancapchain prediction row"):
        check_resumable(plain)


def test_validate_data_names_an_image_whose_size_differs_from_the_record(tmp_path):
    from conftest import write_dataset

    from pancapchain.cli import main

    data = write_dataset(tmp_path / "d", n=2)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[1]["width"] = 64
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate-data", "--data", str(data)]) == 0
    report = json.loads(data.with_suffix(".validation.json").read_text())
    assert report["kept"] == 1
    assert report["skipped"] == [{"record": "s1", "reason": "image size 48x32 differs from the record's width x "
                                  "height 64x32"}]


def test_argparse_mistakes_print_the_usage_on_one_line_then_the_error_line(capsys):
    from pancapchain.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["infer", "--model", "m", "--batch-size", "abc"])
    assert stop.value.code == 2
    usage, error = capsys.readouterr().err.splitlines()
    assert usage.startswith("usage: pancapchain infer [-h] --model MODEL --data DATA") and "--device DEVICE" in usage
    assert error == ("pancapchain infer: error: argument --batch-size: invalid int value: 'abc' "
                     "(see pancapchain infer --help)")
