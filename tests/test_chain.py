"""The chain: batched == one at a time == the paper's re-encoding way; chat edits reach stage 4; infer resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import write_dataset
from PIL import Image

from pancapchain.constants import STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prediction import Prediction
from pancapchain.data.prompts import load_prompts
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import Decoded, GenerationOptions

# plain greedy decoding (no caption loop steering), the decoding of the paper's re-encoding reference
# and every stage-3 item kept (the reference parses answers with set_output, which never drops re-finds)
OPTS = GenerationOptions(max_new_tokens={"localize": 12, "label": 12, "discover": 12, "caption": 16}, no_repeat_ngram=0,
                         refind_iou=0.0)
GIVEN_BOXES = "<box>[[100, 200, 500, 500]]</box>, <box>[[550, 300, 900, 800]]</box>"  # inside every test image


@pytest.fixture(scope="module")
def chain(tiny_checkpoint) -> PancapChain:
    return PancapChain.from_pretrained(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[tuple[str, Image.Image]]:
    root = tmp_path_factory.mktemp("imgs")
    path = write_dataset(root, n=3)
    sizes = [(48, 32), (30, 50), (40, 40)]
    out = []
    for line, size in zip(path.read_text().splitlines(), sizes):
        record = json.loads(line)
        out.append((record["id"], Image.open(root / record["image"]).convert("RGB").resize(size)))
    return out


def _raw(results: list[Prediction]) -> list[dict[str, str]]:
    return [{stage: record.raw for stage, record in r.stages.items()} for r in results]


def test_batched_equals_one_at_a_time_and_the_reencoding_reference(chain, images):
    # Known boxes for stage 1 make stages 2-4 depend on real content; stage 1 is still generated for image 1.
    given = [{"localize": GIVEN_BOXES}, {}, {"localize": GIVEN_BOXES}]
    batched = chain.run([ChainState(i, im) for i, im in images], OPTS, given=given)
    single = [chain.run([ChainState(i, im)], OPTS, given=[g])[0] for (i, im), g in zip(images, given)]
    assert _raw(batched) == _raw(single)
    assert all(set(r.stages) == set(STAGES) for r in batched)

    # The paper's way: one image, pixels re-encoded at every stage, same prompts -> the same text.
    image_id, image = images[1]
    state = ChainState(image_id, image)
    for stage in STAGES:
        prompt = chain.stage_prompt(stage, state)
        text, truncated = chain.generator.generate_reencoding(prompt, image, chain.system, OPTS.for_stage(stage))
        chain.set_output(state, stage, text, prompt, truncated)
    assert {s: o.raw for s, o in state.outputs.items()} == _raw(batched)[1]


def test_views_decoded_together_answer_as_one_view_per_call(chain, images, monkeypatch):
    """Stage 1 over 6 views of 3 images of different sizes: 1, 4 or all 6 views per generate call write the same
    text for every view of every image (rows are view-major either way), and the later stages the same answers.
    (Which row is which view is checked with a scripted model in tests/test_views.py.)"""
    calls: list[list[str]] = []
    generate = chain.generator.generate

    def recording(prompts, *args, **kwargs):
        answers = generate(prompts, *args, **kwargs)
        calls.append([a.text for a in answers])
        return answers

    monkeypatch.setattr(chain.generator, "generate", recording)
    outcome = {}
    for per_call, rows in [(1, [3] * 6), (4, [12, 6]), (6, [18])]:
        calls.clear()
        options = replace(OPTS, localize_views=3, localize_mirror=True, localize_votes=2,
                          localize_view_batch=per_call)
        results = chain.run([ChainState(i, im) for i, im in images], options)
        assert [len(c) for c in calls[:len(rows)]] == rows
        view_texts = [text for call in calls[:len(rows)] for text in call]
        outcome[per_call] = (view_texts, _raw(results))
    assert any(outcome[1][0]) and outcome[1] == outcome[4] == outcome[6]


def test_given_stage_output_feeds_the_next_prompt_and_stop_after(chain, images):
    image_id, image = images[0]
    options = GenerationOptions(max_new_tokens=OPTS.max_new_tokens, stop_after="label")
    [result] = chain.run([ChainState(image_id, image)], options, given=[{"localize": GIVEN_BOXES}])
    assert list(result.stages) == ["localize", "label"]
    assert result.stages["label"].prompt.endswith(GIVEN_BOXES)
    assert result.stages["localize"].edited is True


def test_generated_stage3_items_that_find_a_known_entity_again_are_dropped_and_counted():
    chain = PancapChain(None, SimpleNamespace(tokenizer=None), load_prompts(), BoxCodec("asmv2"), None)
    state = ChainState("img", Image.new("RGB", (100, 100)))
    chain.set_output(state, "label", "cat <box>[[0, 0, 500, 500]]</box>, dog <box>[[500, 500, 1000, 1000]]</box>")
    found = "kitten <box>[[20, 0, 500, 520]]</box>, bird <box>[[0, 600, 300, 1000]]</box>"  # IoU 0.92 with the cat
    chain.generator.generate = lambda prompts, *args, **kwargs: [Decoded(found, False)]
    chain.run_stage("discover", [state], None, GenerationOptions())
    out = state.outputs["discover"]
    assert [it.tag for it in out.items] == ["bird"] and out.refinds == 1 and out.record().refinds == 1
    assert [it.tag for it in state.entities()] == ["cat", "dog", "bird"]
    assert "kitten" not in chain.stage_prompt("caption", state)
    chain.run_stage("discover", [state], None, GenerationOptions(refind_iou=0.0))
    assert [it.tag for it in state.entities()] == ["cat", "dog", "kitten", "bird"] and state.outputs["discover"].refinds == 0
    chain.set_output(state, "discover", found, edited=True)  # a user's stage 3 is kept as given
    assert len(state.outputs["discover"].items) == 2


def _cli(*args: str, stdin: str | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pancapchain", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_chat_edit_of_a_stage2_tag_reaches_stage4(tiny_checkpoint, images, tmp_path):
    image_path = tmp_path / "img.png"
    images[0][1].save(image_path)
    session = tmp_path / "session.json"
    commands = "\n".join([
        "next",
        "next",
        "set lynx <box>[[100, 200, 500, 500]]</box>, walrus <box>[[550, 300, 900, 800]]</box>",
        "edit 0 tag=zebra",
        "remove 1",
        "next",
        "set None",
        "next",
        f"save {session}",
        "quit",
    ]) + "\n"
    proc = _cli("chat", "--model", str(tiny_checkpoint), "--image", str(image_path), "--max-new-tokens", "12",
                stdin=commands)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0: zebra [0.100" in proc.stdout.replace("\n", " ") or "0: zebra" in proc.stdout
    saved = json.loads(session.read_text())
    caption_prompt = saved["stages"]["caption"]["prompt"]
    assert "zebra <box>[[100, 200, 500, 500]]</box>" in caption_prompt
    assert "lynx" not in caption_prompt and "walrus" not in caption_prompt
    assert saved["stages"]["discover"]["prompt"].endswith("zebra <box>[[100, 200, 500, 500]]</box>")
    assert set(saved["edited_stages"]) == {"label", "discover"}


def test_chat_reports_bad_commands_without_dying(tiny_checkpoint):
    proc = _cli("chat", "--model", str(tiny_checkpoint), stdin="next\nfrobnicate\nquit\n")
    assert "error: no image loaded" in proc.stdout and "error: unknown command 'frobnicate'" in proc.stdout


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_infer_resumes_after_a_kill_without_duplicates_or_losses(tiny_checkpoint, tmp_path):
    data = write_dataset(tmp_path / "data", n=6)
    common = ["--model", str(tiny_checkpoint), "--data", str(data), "--batch-size", "1", "--max-new-tokens", "12"]
    reference = tmp_path / "reference.jsonl"
    assert _cli("infer", *common, "--out", str(reference)).returncode == 0

    out = tmp_path / "preds.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pancapchain", "infer", *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and (not out.exists() or len(_lines(out)) < 2):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    n_before = len(_lines(out))
    assert 2 <= n_before < 6
    with out.open("a") as fh:  # a torn last line, as a kill during a write could leave
        fh.write('{"id": "s9", "stages": {"loc')
    resumed = _cli("infer", *common, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"already done {n_before}" in resumed.stdout
    rows = _lines(out)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in _lines(reference))
    by_id = {r["id"]: r for r in _lines(reference)}
    assert all(r == by_id[r["id"]] for r in rows)
    assert "seconds per stage" in resumed.stdout
