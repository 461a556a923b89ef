"""SA-Pancap import: samples from captions + image headers, skips and their report, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pancapchain.cli import main
from pancapchain.data.io import load_samples
from pancapchain.data.sapancap import caption_statistics, import_sapancap, sample_id
from pancapchain.data.schema import Entity, SampleError

CAPTION = (
    "The image shows a cat on a sofa. The cat [[0.1, 0.2, 0.5, 0.9]] is asleep. "
    "The sofa's bounding box is [[0.0, 0.4, 1.0, 1.0]]. The cat [[0.1, 0.2, 0.5, 0.9]] has a collar."
)
RECORDS = [
    {"image_path": "sam/sa_000001/sa_11.jpg", "gt_response": CAPTION},
    {"image_path": "sam/sa_000001/sa_12.png", "gt_response": ""},
    {"image_path": "sam/sa_000001/missing.jpg", "gt_response": "A dog [[0.1, 0.1, 0.2, 0.2]]."},
    {"image_path": "../x.jpg", "gt_response": "A bird [[0.3, 0.3, 0.4, 0.4]]."},
    {
        "image_path": "sam/sa_000002/sa_21.jpg",
        "gt_response": "A point [[0.1, 0.2]] and a tree [[0.2, 0.1, 0.6, 0.7]].",
    },
]


def write_case(tmp_path: Path, records: list = RECORDS) -> tuple[Path, Path]:
    root = tmp_path / "images"
    for rel, size in (
        ("sam/sa_000001/sa_11.jpg", (40, 30)),
        ("sam/sa_000001/sa_12.png", (17, 23)),
        ("sam/sa_000002/sa_21.jpg", (64, 48)),
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 10, 10)).save(root / rel)
    (tmp_path / "x.jpg").write_bytes(b"outside the root")
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(records))
    return captions, root


def test_import_builds_samples_and_reports_skips(tmp_path: Path) -> None:
    captions, root = write_case(tmp_path)
    samples, report = import_sapancap(captions, root)
    assert [s.id for s in samples] == ["sam_sa_000001_sa_11", "sam_sa_000001_sa_12", "sam_sa_000002_sa_21"]
    assert [(s.width, s.height) for s in samples] == [(40, 30), (17, 23), (64, 48)]
    cat = samples[0]
    assert cat.image == "sam/sa_000001/sa_11.jpg" and cat.caption == CAPTION
    assert cat.entities == (Entity(0, "cat", (0.1, 0.2, 0.5, 0.9)), Entity(1, "sofa", (0.0, 0.4, 1.0, 1.0)))
    assert samples[1].entities == () and samples[1].caption == ""
    assert samples[2].entities == (Entity(0, "tree", (0.2, 0.1, 0.6, 0.7)),)
    assert (report.captions, report.samples, report.box_groups, report.boxes) == (5, 3, 6, 6)
    assert (report.boxes_recovered, report.entities, report.tagged_entities) == (6, 5, 5)
    assert report.unparsed == [("captions.json[4] (sam/sa_000002/sa_21.jpg)", "[[0.1, 0.2]]")]
    assert [r for r, _ in report.missing_images] == ["captions.json[2] (sam/sa_000001/missing.jpg)"]
    assert "not found" in report.missing_images[0][1]
    assert [r for r, _ in report.escaping_images] == ["captions.json[3] (../x.jpg)"]
    assert "escapes the image root" in report.escaping_images[0][1]
    assert report.recovered_pct == 100.0 and report.tagged_pct == 100.0
    text = report.summary()
    assert "boxes recovered:        6 (100.00%)" in text and "missing.jpg" in text and "[[0.1, 0.2]]" in text


def test_strict_raises_naming_the_record(tmp_path: Path) -> None:
    captions, root = write_case(tmp_path)
    with pytest.raises(SampleError, match=r"captions.json\[2\] \(sam/sa_000001/missing.jpg\).*not found"):
        import_sapancap(captions, root, strict=True)
    captions, root = write_case(tmp_path, [RECORDS[3]])
    with pytest.raises(SampleError, match=r"\.\./x\.jpg.*escapes the image root"):
        import_sapancap(captions, root, strict=True)


def test_malformed_records_unreadable_images_and_duplicates(tmp_path: Path) -> None:
    records = [
        RECORDS[0],
        ["not", "an object"],
        {"image_path": "a.jpg"},
        {"gt_response": "x"},
        RECORDS[0],
        {"image_path": "broken.jpg", "gt_response": "A rock [[0.1, 0.1, 0.3, 0.3]]."},
    ]
    captions, root = write_case(tmp_path, records)
    (root / "broken.jpg").write_bytes(b"not an image")
    samples, report = import_sapancap(captions, root)
    assert [s.id for s in samples] == ["sam_sa_000001_sa_11"]
    problems = dict(report.invalid_records)
    assert problems["captions.json[1]"] == "expected an object, got list"
    assert problems["captions.json[2] (a.jpg)"] == "missing or non-string 'gt_response'"
    assert problems["captions.json[3]"] == "missing or non-string 'image_path'"
    assert problems["captions.json[4] (sam/sa_000001/sa_11.jpg)"] == "duplicate sample id sam_sa_000001_sa_11"
    assert report.missing_images[0][0] == "captions.json[5] (broken.jpg)"
    assert "unreadable image" in report.missing_images[0][1]
    with pytest.raises(SampleError, match=r"captions.json\[1\]"):
        import_sapancap(captions, root, strict=True)
    (tmp_path / "bad.json").write_text('{"image_path": "a.jpg"}')
    with pytest.raises(SampleError, match="expected a JSON array"):
        import_sapancap(tmp_path / "bad.json", root)


def test_statistics_need_no_images(tmp_path: Path) -> None:
    captions, _ = write_case(tmp_path)
    report = caption_statistics(captions)
    assert (report.captions, report.samples, report.boxes, report.boxes_recovered, report.entities) == (
        5,
        0,
        6,
        6,
        5,
    )
    assert report.missing_images == [] and len(report.unparsed) == 1


def test_sample_id() -> None:
    assert sample_id("sam/sa_000045/sa_507752.jpg") == "sam_sa_000045_sa_507752"
    assert sample_id("a.b/c.jpeg") == "a.b_c"


def test_cli_prepare_sapancap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions, root = write_case(tmp_path)
    out = tmp_path / "out"
    code = main(
        ["prepare", "sapancap", "--captions", str(captions), "--image-root", str(root), "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "boxes found:            6" in printed and "boxes recovered:        6 (100.00%)" in printed
    assert "entities with a tag:    5 (100.00%)" in printed and "[[0.1, 0.2]]" in printed
    assert "images missing or unreadable (skipped): 1" in printed
    samples, skips = load_samples(out / "samples.jsonl", strict=True)
    assert [s.id for s in samples] == ["sam_sa_000001_sa_11", "sam_sa_000001_sa_12", "sam_sa_000002_sa_21"]
    assert samples[0].entities[1].tag == "sofa" and skips.n_skipped == 0
    report = json.loads((out / "import_report.json").read_text())
    assert report["config"]["strict"] is False and report["config"]["captions"] == str(captions)
    assert report["boxes_recovered_pct"] == 100.0 and report["samples"] == 3
    assert report["escaping_images"][0]["record"] == "captions.json[3] (../x.jpg)"

    strict = main(
        [
            "prepare",
            "sapancap",
            "--captions",
            str(captions),
            "--image-root",
            str(root),
            "--out",
            str(tmp_path / "strict"),
            "--strict",
        ]
    )
    assert strict == 1 and "captions.json[2] (sam/sa_000001/missing.jpg)" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "samples.jsonl").exists()

    stats = main(["prepare", "sapancap", "--captions", str(captions), "--stats-only"])
    assert stats == 0 and "boxes recovered:        6 (100.00%)" in capsys.readouterr().out
    assert main(["prepare", "sapancap", "--captions", str(captions)]) == 2
    with pytest.raises(SystemExit):
        main(["prepare"])
