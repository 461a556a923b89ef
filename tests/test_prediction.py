"""The prediction record: infer's rows byte-identical to the recorded writer output; eval and visualize read it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import recorded_scene_scale
from PIL import Image

from pancapchain.constants import STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prediction import Prediction, PredictionError
from pancapchain.data.prompts import load_prompts
from pancapchain.data.stages import build_stage_examples
from pancapchain.data.synth import generate_scene
from pancapchain.eval.inputs import load_predictions
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.resume import append_line
from pancapchain.infer.visualize import visualize

# Written by the dict-building writer (PancapChain.result before the typed record) for the scenario below.
GOLDEN = Path(__file__).parent / "golden" / "predictions_scripted.jsonl"


def _scenes():
    with recorded_scene_scale():
        return [generate_scene(i, seed=9, size=64 + 16 * i) for i in range(4)]


def _scripted_predictions() -> list[Prediction]:
    """Every stage given from training targets (no model); a malformed, truncated label; image 2 stops early."""
    preds = []
    for codec in ("asmv2", "normalized"):
        chain = PancapChain(None, SimpleNamespace(tokenizer=None), load_prompts(), BoxCodec(codec), None)
        for i, (sample, _) in enumerate(_scenes()):
            ex = {e.stage: e for e in build_stage_examples(sample, chain.prompts, chain.codec, STAGES, (0.3, 0.7), i)}
            state = ChainState(sample.id, Image.new("RGB", (sample.width, sample.height)))
            for stage in STAGES if i != 2 else STAGES[:2]:
                raw = ex[stage].target if stage != "label" else ex[stage].target + ", broken <box>[[1, 2"
                chain.set_output(state, stage, raw, chain.stage_prompt(stage, state), truncated=stage == "label")
            pred = chain.prediction(state)
            pred.image = sample.image
            preds.append(pred)
    return preds


def test_rows_are_byte_identical_to_the_recorded_writer(tmp_path):
    out = tmp_path / "preds.jsonl"
    for pred in _scripted_predictions():
        append_line(out, pred.to_dict())
    assert out.read_bytes() == GOLDEN.read_bytes()
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 and "caption" not in rows[2] and rows[3]["stages"]["label"]["malformed"]


def test_from_dict_reads_back_the_same_record():
    expected = _scripted_predictions()
    for line, pred in zip(GOLDEN.read_text(encoding="utf-8").splitlines(), expected):
        read = Prediction.from_dict(json.loads(line))
        assert json.dumps(read.to_dict(), ensure_ascii=False) == line
        # a row without a caption (the chain stopped early) reads back marked: eval scores it zero
        assert read.problem == (None if pred.has_caption else "bad prediction: missing caption")
        assert replace(read, problem=None) == pred and read.warnings == []


def test_eval_and_visualize_read_the_record(tmp_path):
    for sample, image in _scenes():
        (tmp_path / sample.image).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / sample.image)
    pred_path = tmp_path / "preds.jsonl"
    pred_path.write_bytes(GOLDEN.read_bytes())
    preds, report = load_predictions(pred_path)
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    assert report.kept == 4 and len(report.skipped) == 4  # the second codec repeats the ids
    assert {pid: p.caption for pid, p in preds.items()} == {r["id"]: r.get("caption", "") for r in rows[:4]}
    assert preds[rows[2]["id"]].problem == "bad prediction: missing caption"  # stopped before stage 4
    drawn = visualize(pred_path, tmp_path, tmp_path / "vis")
    assert drawn.kept == 8 and len(list((tmp_path / "vis").glob("*.png"))) == 4  # ids repeat across codecs


def test_other_tools_rows_and_bad_lines():
    official = Prediction.from_dict({"image_path": "sa_1/img 2.jpg", "model_response": "A cat."})
    assert (official.id, official.caption, official.stages, official.entities) == ("sa_1_img 2", "A cat.", {}, [])
    assert Prediction.from_dict({"id": 7, "caption": 3}).problem == "bad prediction: caption is int, not a string"
    assert Prediction.from_dict({"id": "a", "caption": "x", "masks": "no"}).warnings == [
        "masks ignored: expected a list, got str"]
    broken = Prediction.from_dict({"id": "b", "caption": "x", "entities": [{"tag": "dog"}]})
    assert broken.entities == [] and broken.warnings[0].startswith("stages/entities ignored: KeyError")
    for bad, problem in (([1], "invalid: a prediction must be a JSON object, got list"),
                         ({"id": True, "caption": "x"}, "invalid: missing or unusable 'id'")):
        with pytest.raises(PredictionError) as err:
            Prediction.from_dict(bad, "line 3")
        assert str(err.value) == f"line 3: {problem}"
