"""``pancapchain eval`` end to end: bad input never crashes (counted, scored zero, warned), zero-entity GT,
output files, and GT vs GT on the 500 real SA-Pancap validation captions (offline mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pancapchain.cli import main
from pancapchain.eval.runner import EvalOptions, evaluate

VAL_CAPTIONS = Path("/work/shared/data/sapancap/val_gtcaption.json")
GOOD = "A red circle [[0.100, 0.100, 0.300, 0.300]] is left of a blue square [[0.500, 0.100, 0.700, 0.300]]."


def _gt(image_id: str, caption: str, entities: list[dict]) -> str:
    return json.dumps({"id": image_id, "image": f"{image_id}.png", "width": 100, "height": 100,
                       "caption": caption, "entities": entities})


ENTS = [{"id": 0, "tag": "red circle", "box": [0.1, 0.1, 0.3, 0.3]},
        {"id": 1, "tag": "blue square", "box": [0.5, 0.1, 0.7, 0.3]}]


@pytest.fixture
def bad_case(tmp_path: Path) -> tuple[Path, Path]:
    gt_lines = [
        _gt("ok", GOOD, ENTS),
        _gt("no_pred", GOOD, ENTS),
        _gt("bad_boxes", GOOD, ENTS),
        _gt("empty", GOOD, ENTS),
        _gt("zero_gt_zero_pred", "An empty grey wall.", []),
        _gt("zero_gt_some_pred", "An empty grey wall.", []),
        _gt("caption_not_str", GOOD, ENTS),
        "{this is not json",
        _gt("ok", GOOD, ENTS),  # duplicate GT id
    ]
    pred_lines = [
        json.dumps({"id": "ok", "caption": GOOD}),
        json.dumps({"id": "ok", "caption": "a later duplicate"}),
        json.dumps({"caption": GOOD}),  # no id
        json.dumps({"id": "stranger", "caption": GOOD}),  # id not in GT
        json.dumps({"id": "bad_boxes", "caption": "A red circle [[0.1, 0.1, 0.3]] and a blue square "
                    "[[0.7, 0.3, 0.5, 0.1]] and a tree [[x, y, z, w]]."}),
        json.dumps({"id": "empty", "caption": ""}),
        json.dumps({"id": "zero_gt_zero_pred", "caption": "A grey wall."}),
        json.dumps({"id": "zero_gt_some_pred", "caption": GOOD}),
        json.dumps({"id": "caption_not_str", "caption": 123}),
        "[1, 2",
    ]
    (tmp_path / "gt.jsonl").write_text("\n".join(gt_lines) + "\n")
    (tmp_path / "pred.jsonl").write_text("\n".join(pred_lines) + "\n")
    return tmp_path / "pred.jsonl", tmp_path / "gt.jsonl"


def test_bad_input_is_counted_scored_zero_and_never_fatal(bad_case, tmp_path, capsys):
    pred, gt = bad_case
    out = tmp_path / "out"
    code = main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--embed-model", "hashing",
                 "--no-caption-metrics"])
    assert code == 0
    printed = capsys.readouterr()
    assert "| Tagging |" in printed.out and "PancapScore" in printed.out
    assert "missing prediction" in printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    images = {r["id"]: r for r in json.loads((out / "per_image.json").read_text())}
    assert (out / "summary.md").read_text().startswith("# Evaluation (offline), 7 images")
    assert metrics["n_images"] == 7
    assert metrics["image_status"] == {"ok": 5, "missing prediction": 1, "bad prediction": 1}
    reasons = [s["reason"] for s in metrics["skipped"]["predictions"]["skipped"]]
    assert any(r.startswith("duplicate") for r in reasons) and any("unusable 'id'" in r for r in reasons)
    assert any(r.startswith("unknown id") for r in reasons) and any("malformed JSON" in r for r in reasons)
    gt_reasons = [s["reason"] for s in metrics["skipped"]["gt"]["skipped"]]
    assert any("malformed JSON" in r for r in gt_reasons) and any(r.startswith("duplicate") for r in gt_reasons)

    assert images["ok"]["pancapscore"] > 0 and images["ok"]["scores"]["tag"]["f1"] == 100.0
    for zero in ("no_pred", "caption_not_str", "empty"):
        assert images[zero]["pancapscore"] == 0.0 and images[zero]["warnings"]
    assert "caption is int" in images["caption_not_str"]["status"]
    assert any("empty predicted caption" in w for w in images["empty"]["warnings"])
    bad = images["bad_boxes"]
    assert bad["counts"]["pred_entities"] == 0 and bad["counts"]["pred_malformed_boxes"] >= 2
    assert any("malformed box" in w for w in bad["warnings"]) and bad["scores"]["tag"]["f1"] == 0.0
    # zero-entity GT: no division by zero; perfect only when nothing was predicted either
    assert images["zero_gt_zero_pred"]["scores"]["tag"]["f1"] == 100.0
    assert images["zero_gt_zero_pred"]["scores"]["loc"]["f1"] == 100.0
    assert images["zero_gt_some_pred"]["scores"]["tag"]["f1"] == 0.0
    mean_tag = sum(r["scores"]["tag"]["f1"] for r in images.values()) / 7
    assert metrics["scores"]["tag"]["f1"] == pytest.approx(mean_tag, abs=1e-3)


def test_cli_rejects_unknown_judge_and_missing_files(tmp_path, capsys):
    assert main(["eval", "--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "p").write_text("")
    (tmp_path / "g").write_text("")
    assert main(["eval", "--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g"), "--out", str(tmp_path),
                 "--judge", "gpt"]) == 2
    assert "offline' or 'hf:PATH'" in capsys.readouterr().err


def test_sapancap_json_gt_and_official_prediction_format(tmp_path):
    gt = [{"image_path": "sam/sa_000001/sa_42.jpg", "gt_response": GOOD},
          {"image_path": "sam/sa_000001/sa_42.jpg", "gt_response": GOOD},
          {"image_path": 7, "gt_response": GOOD}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    # official prediction file: image_path + model_response, <box> integers on the (assumed square) grid
    pred = [{"image_path": "sam/sa_000001/sa_42.jpg",
             "model_response": "A red circle <box>[[100, 100, 300, 300]]</box> is left of a blue square "
                               "<box>[[500, 100, 700, 300]]</box>."}]
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    result = evaluate(tmp_path / "pred.json", tmp_path / "gt.json", EvalOptions(embed_model="hashing", meteor=False))
    assert [r.id for r in result.images] == ["sam_sa_000001_sa_42"]
    assert result.metrics["scores"]["loc"]["f1"] == 100.0
    assert any("assumed square" in n for n in result.metrics["notes"])
    assert len(result.metrics["skipped"]["gt"]["skipped"]) == 2  # duplicate + invalid image_path
    assert set(result.metrics["caption_metrics"]) >= {"BLEU-4", "CIDEr-D", "ROUGE-L"}


@pytest.mark.skipif(not VAL_CAPTIONS.is_file(), reason="needs /work/shared/data/sapancap/val_gtcaption.json")
@pytest.mark.timeout(240)
def test_gt_vs_gt_on_500_real_captions(tmp_path, capsys):
    records = json.loads(VAL_CAPTIONS.read_text())
    from pancapchain.data.sapancap import sample_id

    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": sample_id(r["image_path"]), "caption": r["gt_response"]}) + "\n"
                            for r in records))
    result = evaluate(pred, VAL_CAPTIONS, EvalOptions(caption_metrics=False))  # real packaged MiniLM
    m = result.metrics
    assert m["n_images"] == 500 and m["image_status"] == {"ok": 500}
    assert m["scores"]["tag"]["f1"] == 100.0 and m["scores"]["loc"]["f1"] == 100.0
    with capsys.disabled():
        print(f"\nGT vs GT, 500 SA-Pancap val captions (offline): PancapScore {m['pancapscore']:.2f}, "
              + ", ".join(f"{d} F1 {m['scores'][d]['f1']:.2f}" for d in m["scores"]))
