"""A user's mistakes: every command answers with one ``<prog>: error: ...`` line naming the problem, exit code 2,
no traceback, and no file of the user changed or created (hashes of the whole folder before and after).

Every case runs the real command in a subprocess (with a timeout) against one folder of the user's files.
The checks happen before any model loads, so most cases take about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_dataset

REPO = Path(__file__).resolve().parents[1]
NOTES = b'{"note": "buy milk"}\n{"note": "call Ann"}'  # a user's JSONL whose last line has no newline


def run(args: list[str], cwd: Path, timeout: float = 900, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PANCAPCHAIN_DEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, input=stdin)


def snapshot(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file, "dir" for every folder, under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint) -> Path:
    """The user's folder: data, images, notes, a truncated checkpoint, a non-checkpoint, bad recipes."""
    root = tmp_path_factory.mktemp("user")
    write_dataset(root / "data", n=2)
    (root / "notes.jsonl").write_bytes(NOTES)
    (root / "plain.txt").write_text("just text\n")
    (root / "fake.png").write_text("not an image\n")
    shutil.copy(root / "data" / "images" / "s0.png", root / "img.png")
    (root / "notckpt").mkdir()
    (root / "notckpt" / "readme.txt").write_text("my notes\n")
    (root / "empty_images").mkdir()
    broken = root / "broken_ckpt"
    shutil.copytree(tiny_checkpoint, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(tiny_checkpoint, root / "ckpt", ignore=shutil.ignore_patterns("checkpoint-*"))
    (root / "pretty.json").write_text(json.dumps({"id": "s0", "caption": "a red square"}, indent=2))
    (root / "tag.yaml").write_text('model: !!python/object/apply:os.system ["echo hacked"]\n')
    (root / "nodata.yaml").write_text("data:\n  train: missing/train.jsonl\ntrain:\n  output_dir: runs/new\n")
    (root / "outfile.yaml").write_text(f"data:\n  train: {root / 'data' / 'samples.jsonl'}\ntrain:\n"
                                       "  output_dir: plain.txt\n")
    return root


M = ["-m", "pancapchain"]
TRAIN = [str(REPO / "train.py")]
INFER = [*M, "infer", "--model", "ckpt", "--data", "data/samples.jsonl"]


def infer_with(model: str) -> list[str]:
    return [*M, "infer", "--model", model, "--data", "data/samples.jsonl", "--out", "p.jsonl"]


BOX = ["--box", "0.1,0.1,0.5,0.5"]

# (case id, argv, program name in the message, text the message must contain)
CASES = [
    ("infer-cuts-user-file", [*INFER, "--out", "notes.jsonl"], "pancapchain infer", "not written by"),
    ("infer-not-a-checkpoint", infer_with("notckpt"), "pancapchain infer",
     "not a pancapchain checkpoint"),
    ("infer-truncated-adapter", infer_with("broken_ckpt"), "pancapchain infer",
     "adapter_model.safetensors is truncated"),
    ("infer-batch-size-0", [*INFER, "--out", "p.jsonl", "--batch-size", "0"], "pancapchain infer",
     "--batch-size 0: must be >= 1"),
    ("infer-batch-size-negative", [*INFER, "--out", "p.jsonl", "--batch-size", "-1"], "pancapchain infer",
     "--batch-size -1: must be >= 1"),
    ("infer-out-under-a-file", [*INFER, "--out", "plain.txt/p.jsonl"], "pancapchain infer", "plain.txt is a file"),
    ("infer-out-is-a-folder", [*INFER, "--out", "data"], "pancapchain infer", "--out data: is a folder"),
    ("infer-missing-data", [*M, "infer", "--model", "ckpt", "--data", "nope.jsonl", "--out", "p.jsonl"],
     "pancapchain infer", "--data nope.jsonl does not exist"),
    ("infer-top-p", [*INFER, "--out", "p.jsonl", "--top-p", "1.5"], "pancapchain infer", "--top-p 1.5"),
    ("chat-not-a-checkpoint", [*M, "chat", "--model", "notckpt"], "pancapchain chat", "not a pancapchain checkpoint"),
    ("chat-missing-image", [*M, "chat", "--model", "ckpt", "--image", "nope.png"], "pancapchain chat",
     "--image nope.png does not exist"),
    ("ground-not-a-checkpoint", [*M, "ground", "--model", "notckpt", "--image", "img.png", "--caption", "a cat"],
     "pancapchain ground", "not a pancapchain checkpoint"),
    ("ground-missing-image", [*M, "ground", "--model", "ckpt", "--image", "nope.png", "--caption", "a"],
     "pancapchain ground", "--image nope.png does not exist"),
    ("ground-not-an-image", [*M, "ground", "--model", "ckpt", "--image", "fake.png", "--caption", "a"],
     "pancapchain ground", "not a readable image"),
    ("ground-no-source", [*M, "ground", "--model", "ckpt"], "pancapchain ground", "give either --data"),
    ("ground-data-needs-out", [*M, "ground", "--model", "ckpt", "--data", "data/samples.jsonl"],
     "pancapchain ground", "--data needs --out"),
    ("ground-no-mask-head", [*M, "ground", "--model", "ckpt", "--image", "img.png", "--caption", "a cat"],
     "pancapchain ground", "has no mask head"),
    ("ground-resume-user-file", [*M, "ground", "--model", "ckpt", "--data", "data/samples.jsonl", "--out",
                                 "notes.jsonl"], "pancapchain ground", "not written by"),
    ("segcap-k-0", [*M, "segcap", "--model", "ckpt", "--image", "img.png", *BOX, "-k", "0"], "pancapchain segcap",
     "-k 0: must be >= 1"),
    ("segcap-missing-image", [*M, "segcap", "--model", "ckpt", "--image", "nope.png", *BOX], "pancapchain segcap",
     "--image nope.png does not exist"),
    ("segcap-not-a-checkpoint", [*M, "segcap", "--model", "notckpt", "--image", "img.png", *BOX],
     "pancapchain segcap", "not a pancapchain checkpoint"),
    ("segcap-short-box", [*M, "segcap", "--model", "ckpt", "--image", "img.png", "--box", "0.1,0.2"],
     "pancapchain segcap", "--box '0.1,0.2'"),
    ("region-missing-image", [*M, "region", "--model", "ckpt", "--image", "nope.png", *BOX], "pancapchain region",
     "--image nope.png does not exist"),
    ("region-box-out-of-range", [*M, "region", "--model", "ckpt", "--image", "img.png", "--box", "0.1,0.2,1.7,0.5"],
     "pancapchain region", "1.7"),
    ("export-truncated-adapter", [*M, "export", "--checkpoint", "broken_ckpt", "--out", "exported"],
     "pancapchain export", "adapter_model.safetensors is truncated"),
    ("export-not-a-checkpoint", [*M, "export", "--checkpoint", "notckpt", "--out", "exported"], "pancapchain export",
     "not a pancapchain checkpoint"),
    ("visualize-no-image-found", [*M, "visualize", "--pred", "data/samples.jsonl", "--images", "empty_images",
                                  "--out", "pictures"], "pancapchain visualize", "no picture drawn"),
    ("visualize-missing-pred", [*M, "visualize", "--pred", "nope.jsonl", "--images", "data", "--out", "pictures"],
     "pancapchain visualize", "--pred nope.jsonl does not exist"),
    ("eval-pretty-printed-object", [*M, "eval", "--pred", "pretty.json", "--gt", "data/samples.jsonl", "--out",
                                    "scores", "--embed-model", "hashing", "--no-caption-metrics"],
     "pancapchain eval", "one JSON object spread over several lines"),
    ("eval-out-is-a-file", [*M, "eval", "--pred", "data/samples.jsonl", "--gt", "data/samples.jsonl", "--out",
                            "plain.txt"], "pancapchain eval", "--out plain.txt: is a file"),
    ("eval-threshold", [*M, "eval", "--pred", "data/samples.jsonl", "--gt", "data/samples.jsonl", "--out", "scores",
                        "--iou-threshold", "5"], "pancapchain eval", "--iou-threshold 5.0"),
    ("validate-missing-data", [*M, "validate-data", "--data", "nope.jsonl"], "pancapchain validate-data",
     "--data nope.jsonl does not exist"),
    ("synth-out-is-a-file", [*M, "synth", "--out", "plain.txt", "--n-train", "1", "--n-val", "1"],
     "pancapchain synth", "--out plain.txt: is a file"),
    ("prepare-missing-captions", [*M, "prepare", "sapancap", "--captions", "nope.json", "--stats-only"],
     "pancapchain prepare", "--captions nope.json does not exist"),
    ("train-missing-recipe", [*TRAIN, "--recipe", "nope.yaml"], "train.py", "--recipe nope.yaml does not exist"),
    ("train-yaml-tag", [*TRAIN, "--recipe", "tag.yaml"], "train.py", "no !!tags"),
    ("train-missing-data", [*TRAIN, "--recipe", "nodata.yaml"], "train.py",
     "data.train missing/train.jsonl does not exist"),
    ("train-output-dir-is-a-file", [*TRAIN, "--recipe", "outfile.yaml"], "train.py",
     "train.output_dir plain.txt: is a file"),
    ("train-bad-override", [*TRAIN, "--recipe", "nodata.yaml", "train.max_steps=abc"], "train.py", "max_steps"),
    ("cli-train-missing-recipe", [*M, "train", "--recipe", "nope.yaml"], "pancapchain train",
     "--recipe nope.yaml does not exist"),
]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_gets_one_line_exit_2_and_changes_nothing(world, case):
    _, argv, prog, expected = case
    before = snapshot(world)
    proc = run(argv, world)
    assert snapshot(world) == before, "a file of the user changed or a file/folder was created"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr
    assert expected in errors[0], errors[0]


@pytest.mark.timeout(900)
def test_debug_flag_and_environment_show_the_traceback(world):
    args = [*INFER, "--out", "p.jsonl", "--batch-size", "0"]
    for extra_args, env_debug in (([*args, "--debug"], False), (args, True)):
        env = {**os.environ, "PANCAPCHAIN_DEBUG": "1"} if env_debug else None
        proc = subprocess.run([sys.executable, *extra_args], cwd=world, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 2
        assert "Traceback" in proc.stderr and "PreflightError" in proc.stderr
        assert proc.stderr.rstrip().splitlines()[-1] == "pancapchain infer: error: --batch-size 0: must be >= 1"


@pytest.mark.timeout(1800)
def test_chat_survives_every_bad_command_and_save_refuses_a_missing_folder(world, tmp_path):
    session = tmp_path / "session.json"
    commands = [
        "show",
        "edit 0 tag=x",
        'add "x 0.1,0.1,0.2,0.2',
        "image nope.png",
        "image img.png",
        "show",
        "next",
        "add 0.1,0.2,1.7,0.5",
        f"save {tmp_path / 'no_such_folder' / 's.json'}",
        f"save {tmp_path}",
        f"save {session}",
        "quit",
    ]
    proc = run([*M, "chat", "--model", "ckpt", "--max-new-tokens", "8"], world, stdin="\n".join(commands) + "\n")
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    assert proc.returncode == 1  # a piped session with errors
    assert out.count("error: no image loaded") == 2  # show, edit
    assert "error: cannot read the command (No closing quotation)" in out
    assert "error: nope.png: no such file or directory" in out
    assert "error: bad box '0.1,0.2,1.7,0.5': box [0.1, 0.2, 1.7, 0.5] is outside [0, 1]" in out
    assert "error: no stage has run yet" in out
    assert f"folder {tmp_path / 'no_such_folder'} does not exist" in out and not (tmp_path / "no_such_folder").exists()
    assert "it is a folder" in out
    assert json.loads(session.read_text())["id"] == "img"
