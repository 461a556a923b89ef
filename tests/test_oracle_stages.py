"""``pancapchain infer --oracle-through STAGE``: the ground truth stands in for the chain's first stages."""

from __future__ import annotations

import json

import pytest
from conftest import write_dataset

from pancapchain.cli import main
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.io import load_samples
from pancapchain.data.prompts import load_prompts
from pancapchain.data.stages import build_stage_examples, ground_truth_answers


def test_ground_truth_answers_are_the_training_targets(tmp_path):
    data = write_dataset(tmp_path / "data", n=3)
    codec = BoxCodec("bins")
    for sample in load_samples(data)[0]:
        targets = {ex.stage: ex.target for ex in
                   build_stage_examples(sample, load_prompts("v1"), codec, stages=("localize", "label"))}
        answers = ground_truth_answers(sample, codec, "discover")
        assert answers == {"localize": targets["localize"], "label": targets["label"], "discover": "None"}
        assert list(ground_truth_answers(sample, codec, "localize")) == ["localize"]
    with pytest.raises(ValueError, match="oracle stages end at one of"):
        ground_truth_answers(sample, codec, "caption")


def test_box_first_oracle_answers_are_the_box_first_training_targets(tmp_path):
    codec = BoxCodec("bins")
    for sample in load_samples(write_dataset(tmp_path / "data", n=2))[0]:
        [label] = build_stage_examples(sample, load_prompts("v1"), codec, stages=("label",), label_answer="box_first")
        assert label.target.startswith("<box>") and not label.target.endswith("</box>")
        assert ground_truth_answers(sample, codec, "label", label_answer="box_first")["label"] == label.target
    with pytest.raises(ValueError, match="label_answer must be one of"):
        ground_truth_answers(sample, codec, "label", label_answer="sideways")


def test_infer_takes_the_given_stages_and_generates_the_rest(tiny_checkpoint, tmp_path, one_thread):
    data = write_dataset(tmp_path / "data", n=2)
    out = tmp_path / "preds.jsonl"
    argv = ["infer", "--model", str(tiny_checkpoint), "--data", str(data), "--out", str(out),
            "--max-new-tokens", "12", "--oracle-through", "label"]
    assert main(argv) == 0
    meta = json.loads((tiny_checkpoint / "pancap_meta.json").read_text())
    codec = BoxCodec(meta["box_format"])
    samples = {s.id: s for s in load_samples(data)[0]}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(samples)
    for row in rows:
        truth = ground_truth_answers(samples[row["id"]], codec, "label")
        stages = row["stages"]
        assert [stages[s]["raw"] for s in ("localize", "label")] == [truth["localize"], truth["label"]]
        assert stages["localize"]["edited"] and stages["label"]["edited"]
        assert not stages["discover"]["edited"] and not stages["caption"]["edited"]
        # the caption stage was prompted with the given tags and boxes
        assert all(item["tag"] in stages["caption"]["prompt"] for item in stages["label"]["items"])
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["oracle_through"] == "label"


def test_oracle_needs_a_chain_and_a_jsonl(tiny_checkpoint, tmp_path):
    data = write_dataset(tmp_path / "data", n=1)
    base = ["infer", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "p.jsonl"), "--oracle-through", "label"]
    with pytest.raises(SystemExit, match="drop --direct"):
        main([*base, "--data", str(data), "--direct"])
    with pytest.raises(SystemExit, match="JSONL with entities"):
        main([*base, "--data", str(data.parent)])


def test_oracle_items_are_written_in_the_checkpoints_item_order_and_layout(tmp_path):
    from pancapchain.data.io import SkipReport
    from pancapchain.infer.batch import list_items

    data = write_dataset(tmp_path / "data", n=2, n_entities=3)
    codec = BoxCodec("bins")
    items = list_items(data, None, SkipReport(), (codec, "label", "raster", "box_first"))
    for sample, row in zip(load_samples(data)[0], items):
        assert row.given == ground_truth_answers(sample, codec, "label", item_order="raster", label_answer="box_first")
        assert row.given["label"].startswith("<box>")
