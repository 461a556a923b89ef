"""A user's mistakes: every command answers with one ``<prog>: error: ...`` line naming the problem, exit code 2,
no traceback, and no file of the user changed or created (hashes of the whole folder before and after).

Every case runs the command's own ``main(argv)`` in this process (stderr captured, cwd = the user's folder),
which takes milliseconds once the imports are warm; a few cases also run as real subprocesses (``python -m
pancapchain``, ``python train.py``) with a timeout, to cover the interpreter's side (exit code, no traceback).
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
    # cwd is the user's folder, so put this checkout first on the path (not an installed copy of pancapchain)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
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
    (root / "resume.yaml").write_text(f"data:\n  train: {root / 'data' / 'samples.jsonl'}\ntrain:\n"
                                      "  output_dir: runs/new\n  resume: notckpt\n")
    (root / "list.yaml").write_text("- model\n- data\n")
    return root


M = ["-m", "pancapchain"]
TRAIN = [str(REPO / "train.py")]
INFER = [*M, "infer", "--model", "ckpt", "--data", "data/samples.jsonl"]


def infer_with(model: str) -> list[str]:
    return [*M, "infer", "--model", model, "--data", "data/samples.jsonl", "--out", "p.jsonl"]


BOX = ["--box", "0.1,0.1,0.5,0.5"]
REGION = [*M, "region", "--model", "ckpt", "--image", "img.png"]
EVAL = [*M, "eval", "--pred", "data/samples.jsonl", "--gt", "data/samples.jsonl", "--out", "scores"]
PLAN = [*M, "plan-memory", "--model", "7b", "--gpus", "1", "--gpu-mem", "24", "--zero", "2", "--lora-r", "8"]

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
    # more mistakes, one per kind: a folder for a file, a file for a folder, bad numbers, bad boxes, not a checkpoint
    ("argparse-bad-int", [*INFER, "--out", "p.jsonl", "--batch-size", "abc"], "pancapchain infer",
     "argument --batch-size: invalid int value: 'abc' (see pancapchain infer --help)"),
    ("argparse-missing-required", [*M, "infer", "--model", "ckpt"], "pancapchain infer",
     "the following arguments are required: --data, --out"),
    ("argparse-unknown-command", [*M, "nosuch"], "pancapchain", "argument COMMAND: invalid choice: 'nosuch'"),
    ("infer-model-is-a-file", infer_with("plain.txt"), "pancapchain infer",
     "--model plain.txt: is a file, a folder was expected"),
    ("infer-max-new-tokens-negative", [*INFER, "--out", "p.jsonl", "--max-new-tokens", "-1"], "pancapchain infer",
     "--max-new-tokens -1: must be >= 0"),
    ("infer-no-repeat-ngram-1", [*INFER, "--out", "p.jsonl", "--no-repeat-ngram", "1"], "pancapchain infer",
     "--no-repeat-ngram 1 would forbid every token already written"),
    ("infer-localize-views-10", [*INFER, "--out", "p.jsonl", "--localize-views", "10"], "pancapchain infer",
     "--localize-views 10: must be between 1 and 9"),
    ("infer-localize-votes-over-views", [*INFER, "--out", "p.jsonl", "--localize-views", "3", "--localize-votes",
                                         "4"], "pancapchain infer", "--localize-votes 4: must be between 0 and 3"),
    ("infer-localize-votes-over-mirrored-views", [*INFER, "--out", "p.jsonl", "--localize-views", "3",
                                                  "--localize-mirror", "--localize-votes", "7"], "pancapchain infer",
     "--localize-votes 7: must be between 0 and 6"),
    ("infer-localize-suppress-over-1", [*INFER, "--out", "p.jsonl", "--localize-views", "3", "--localize-suppress",
                                        "1.5"], "pancapchain infer", "--localize-suppress 1.5: must be between 0.0 and 1.0"),
    ("infer-localize-suppress-without-views", [*INFER, "--out", "p.jsonl", "--localize-suppress", "0.5"],
     "pancapchain infer", "--localize-suppress compares how many stage-1 views found two overlapping entities"),
    ("infer-discover-seen-without-views", [*INFER, "--out", "p.jsonl", "--discover-seen", "2"], "pancapchain infer",
     "--discover-seen counts the stage-1 views that boxed a find: it needs --localize-views > 1"),
    ("infer-mask-boxes-without-views", [*INFER, "--out", "p.jsonl", "--localize-mask-boxes"], "pancapchain infer",
     "--localize-mask-boxes moves each stage-1 view's boxes before the vote: it needs --localize-views > 1"),
    ("infer-localize-view-batch-0", [*INFER, "--out", "p.jsonl", "--localize-views", "3", "--localize-view-batch",
                                     "0"], "pancapchain infer", "--localize-view-batch 0: must be >= 1"),
    ("infer-ordered-boxes-localize", [*INFER, "--out", "p.jsonl", "--ordered-boxes", "label,localize"],
     "pancapchain infer", "['localize'] give no boxes; choose from label, caption or 'none'"),
    ("infer-free-boxes-ordered", [*INFER, "--out", "p.jsonl", "--free-boxes", "--ordered-boxes", "label"],
     "pancapchain infer", "--ordered-boxes 'label' orders the given boxes, which --free-boxes turns off"),
    ("infer-reference-tags-missing", [*INFER, "--out", "p.jsonl", "--reference-tags", "nope.jsonl"],
     "pancapchain infer", "--reference-tags nope.jsonl does not exist"),
    ("infer-free-references-with-tags", [*INFER, "--out", "p.jsonl", "--free-references", "--reference-tags",
                                         "data/samples.jsonl"], "pancapchain infer",
     "--reference-tags sets the tags of the rule --free-references turns off"),
    ("infer-temperature-0", [*INFER, "--out", "p.jsonl", "--temperature", "0"], "pancapchain infer",
     "--temperature 0.0: must be between"),
    ("infer-limit-negative", [*INFER, "--out", "p.jsonl", "--limit", "-1"], "pancapchain infer",
     "--limit -1: must be >= 0"),
    ("infer-image-root-missing", [*INFER, "--out", "p.jsonl", "--image-root", "nope"], "pancapchain infer",
     "--image-root nope does not exist"),
    ("eval-pred-is-a-folder", [*M, "eval", "--pred", "data", "--gt", "data/samples.jsonl", "--out", "scores"],
     "pancapchain eval", "--pred data: is a folder, a file was expected"),
    ("eval-missing-gt", [*M, "eval", "--pred", "data/samples.jsonl", "--gt", "nope.jsonl", "--out", "scores"],
     "pancapchain eval", "--gt nope.jsonl does not exist"),
    ("eval-threshold-nan", [*EVAL, "--embed-threshold", "nan"], "pancapchain eval",
     "--embed-threshold nan: must be between 0.0 and 1.0"),
    ("eval-gt-not-samples", [*M, "eval", "--pred", "data/samples.jsonl", "--gt", "plain.txt", "--out", "scores"],
     "pancapchain eval", "--gt plain.txt: no usable GT record (1 skipped; e.g. plain.txt:1: malformed JSON"),
    ("eval-pred-not-predictions", [*M, "eval", "--pred", "notes.jsonl", "--gt", "data/samples.jsonl", "--out",
                                   "scores"], "pancapchain eval",
     "--pred notes.jsonl: no usable prediction (2 skipped; e.g. notes.jsonl:1: invalid: missing or unusable 'id')"),
    ("eval-bad-judge", [*EVAL, "--judge", "gpt4"], "pancapchain eval", "--judge must be 'offline' or 'hf:PATH'"),
    ("eval-judge-cache-is-a-file", [*EVAL, "--judge-cache", "plain.txt"], "pancapchain eval",
     "--judge-cache plain.txt: is a file"),
    ("region-not-an-image", [*M, "region", "--model", "ckpt", "--image", "fake.png", *BOX], "pancapchain region",
     "--image fake.png: not a readable image"),
    ("region-box-not-numbers", [*REGION, "--box", "a,b,c,d"], "pancapchain region",
     "pancapchain region: error: --box 'a,b,c,d': not a number in"),
    ("region-box-nan", [*REGION, "--box", "nan,0.1,0.5,0.5"], "pancapchain region", "not finite"),
    ("region-box-reversed", [*REGION, "--box", "0.5,0.5,0.1,0.1"], "pancapchain region", "x2 < x1"),
    ("segcap-top-p-0", [*M, "segcap", "--model", "ckpt", "--image", "img.png", *BOX, "--top-p", "0"],
     "pancapchain segcap", "--top-p 0.0: must be between"),
    ("segcap-out-is-a-folder", [*M, "segcap", "--model", "ckpt", "--image", "img.png", *BOX, "--out", "data"],
     "pancapchain segcap", "--out data: is a folder"),
    ("ground-tau", [*M, "ground", "--model", "ckpt", "--image", "img.png", "--caption", "a", "--tau", "2"],
     "pancapchain ground", "--tau 2.0: must be between"),
    ("ground-missing-candidates", [*M, "ground", "--model", "ckpt", "--image", "img.png", "--caption", "a",
                                   "--candidates", "nope.pt"], "pancapchain ground", "--candidates nope.pt does not exist"),
    ("chat-not-an-image", [*M, "chat", "--model", "ckpt", "--image", "fake.png"], "pancapchain chat",
     "--image fake.png: not a readable image"),
    ("export-out-is-a-file", [*M, "export", "--checkpoint", "ckpt", "--out", "plain.txt"], "pancapchain export",
     "--out plain.txt: is a file"),
    ("export-missing-base", [*M, "export", "--checkpoint", "ckpt", "--out", "exported", "--base", "nope"],
     "pancapchain export", "--base nope does not exist"),
    ("visualize-pred-is-a-folder", [*M, "visualize", "--pred", "data", "--images", "data", "--out", "pictures"],
     "pancapchain visualize", "--pred data: is a folder"),
    ("visualize-limit-negative", [*M, "visualize", "--pred", "data/samples.jsonl", "--images", "data", "--out",
                                  "pictures", "--limit", "-1"], "pancapchain visualize", "--limit -1: must be >= 0"),
    ("validate-data-is-a-folder", [*M, "validate-data", "--data", "data"], "pancapchain validate-data",
     "--data data: is a folder"),
    ("validate-image-root-is-a-file", [*M, "validate-data", "--data", "data/samples.jsonl", "--image-root",
                                       "plain.txt"], "pancapchain validate-data", "--image-root plain.txt: is a file"),
    ("synth-negative-count", [*M, "synth", "--out", "syn", "--n-train", "-1"], "pancapchain synth",
     "--n-train -1: must be >= 0"),
    ("synth-size-too-small", [*M, "synth", "--out", "syn", "--size", "8"], "pancapchain synth",
     "--size 8: must be >= 32"),
    ("prepare-captions-is-a-folder", [*M, "prepare", "sapancap", "--captions", "data", "--stats-only"],
     "pancapchain prepare", "--captions data: is a folder"),
    ("plan-memory-gpus-0", [*PLAN[:6], "0", *PLAN[7:]], "pancapchain plan-memory", "--gpus 0: must be >= 1"),
    ("plan-memory-unknown-model", [*PLAN[:3], "--model", "nope", *PLAN[5:]], "pancapchain plan-memory",
     "--model 'nope': not one of ['13b', '7b']"),
    ("plan-memory-model-not-a-config", [*PLAN[:3], "--model", "data/samples.jsonl", *PLAN[5:]],
     "pancapchain plan-memory", "--model data/samples.jsonl: not a llava-hf config.json"),
    ("plan-memory-json-is-a-folder", [*PLAN, "--json", "data"], "pancapchain plan-memory", "--json data: is a folder"),
    ("convert-llava-missing-src", [*M, "convert-llava", "--src", "nope", "--out", "conv"], "pancapchain convert-llava",
     "--src nope does not exist"),
    ("serve-not-a-checkpoint", [*M, "serve", "--model", "notckpt"], "pancapchain serve", "not a pancapchain checkpoint"),
    ("serve-bad-port", [*M, "serve", "--model", "ckpt", "--port", "0"], "pancapchain serve",
     "--port 0 is not a TCP port"),
    ("train-recipe-is-a-folder", [*TRAIN, "--recipe", "data"], "train.py", "--recipe data: is a folder"),
    ("train-recipe-is-a-list", [*TRAIN, "--recipe", "list.yaml"], "train.py", "must be a mapping of sections"),
    ("train-resume-not-a-checkpoint", [*TRAIN, "--recipe", "resume.yaml"], "train.py",
     "train.resume notckpt: not a training checkpoint (no trainer_state.json)"),
    ("train-unknown-key", [*TRAIN, "--recipe", "nodata.yaml", "train.nosuch=1"], "train.py", "nosuch"),
]

# The cases that also run as real subprocesses: one per entry point and one argparse error.
SUBPROCESS_CASES = ("infer-cuts-user-file", "train-yaml-tag", "argparse-bad-int")


def run_in_process(argv: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """``argv`` (``-m pancapchain ...`` or ``train.py ...``) through the entry point's ``main``: (code, out, err)."""
    from pancapchain.cli import main as cli_main
    from pancapchain.train.run import main as train_main

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("PANCAPCHAIN_DEBUG", raising=False)
    capsys.readouterr()
    try:
        code = cli_main(argv[2:]) if argv[:2] == M else train_main(argv[1:])
    except SystemExit as stop:  # argparse
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_one_line(code: int, out: str, err: str, prog: str, expected: str, usage: bool) -> None:
    assert code == 2, out + err
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    assert err.rstrip().splitlines()[-1] == errors[0]  # the error is the last line (after argparse's usage)
    if usage:  # argparse's mistakes: the usage on one line, then the error line
        assert len(err.rstrip().splitlines()) == 2 and err.startswith("usage: "), err


@pytest.mark.timeout(1800)  # the first case waits for the tiny checkpoint (trained once per session)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_gets_one_line_exit_2_and_changes_nothing(world, case, monkeypatch, capsys):
    name, argv, prog, expected = case
    before = snapshot(world)
    code, out, err = run_in_process(argv, world, monkeypatch, capsys)
    assert snapshot(world) == before, "a file of the user changed or a file/folder was created"
    check_one_line(code, out, err, prog, expected, usage=name.startswith("argparse-"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SUBPROCESS_CASES], ids=lambda c: c[0])
def test_the_same_through_a_real_process(world, case):
    name, argv, prog, expected = case
    before = snapshot(world)
    proc = run(argv, world)
    assert snapshot(world) == before, "a file of the user changed or a file/folder was created"
    lines = [line for line in proc.stderr.splitlines() if "kernels-community" not in line]  # bitsandbytes' import note
    check_one_line(proc.returncode, proc.stdout, "\n".join(lines) + "\n", prog, expected, usage=name.startswith("argparse-"))


def test_debug_flag_and_environment_show_the_traceback(world, monkeypatch, capsys):
    args = [*INFER, "--out", "p.jsonl", "--batch-size", "0"]
    for argv, env_debug in (([*args, "--debug"], False), (args, True)):
        monkeypatch.chdir(world)
        if env_debug:
            monkeypatch.setenv("PANCAPCHAIN_DEBUG", "1")
        from pancapchain.cli import main

        assert main(argv[2:]) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "PreflightError" in err
        assert err.rstrip().splitlines()[-1] == "pancapchain infer: error: --batch-size 0: must be >= 1"


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


def test_eval_of_an_oversized_caption_or_line_names_the_record_instead_of_scoring_for_minutes(
        world, tmp_path, monkeypatch, capsys):
    from pancapchain.data import io

    monkeypatch.setattr(io, "MAX_LINE_CHARS", 200_000)  # the real limit is 64 Mi characters
    long_caption = json.dumps({"id": "s0", "caption": "a red square " * 10_000})  # 130,000 characters
    long_line = json.dumps({"id": "s1", "caption": "x" * 300_000})
    pred = tmp_path / "pred.jsonl"
    pred.write_text(long_caption + "\n" + long_line + "\n")
    out = tmp_path / "scores"
    code, _, err = run_in_process([*M, "eval", "--pred", str(pred), "--gt", "data/samples.jsonl", "--out", str(out),
                                   "--embed-model", "hashing", "--no-wordnet"], world, monkeypatch, capsys)
    assert code == 0 and "Traceback" not in err
    assert ("warning: s0: bad prediction: caption of 130000 characters, more than the 50000 scored "
            "(a runaway generation?)") in err.splitlines()
    skipped = json.loads((out / "metrics.json").read_text())["skipped"]["predictions"]["skipped"]
    assert skipped == [{"record": "pred.jsonl:2",
                        "reason": f"too long: {len(long_line) + 1} characters on one line, more than 200000 (not read)"}]
