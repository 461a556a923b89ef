"""benchmarks/localization_report.py: tag-free box recall per stage, things and stuff apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pancapchain.data.schema import Entity, PanopticSample

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("localization_report", ROOT / "benchmarks" / "localization_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recall_splits_things_from_stuff_and_measures_centres():
    report = _report_module()
    sample = PanopticSample("s", "images/s.png", 64, 64, (
        Entity(0, "sky", (0.0, 0.0, 1.0, 0.5), None, is_thing=False),
        Entity(1, "red circle", (0.5, 0.5, 0.75, 0.75), None),
        Entity(2, "blue square", (0.0, 0.75, 0.25, 1.0), None),
    ), "caption")
    pred = {"id": "s", "stages": {"localize": {"items": [
        {"tag": None, "boxes": [[0.0, 0.0, 1.0, 0.5]]},           # the sky, exactly
        {"tag": None, "boxes": [[0.5625, 0.5, 0.8125, 0.75]]},    # the circle shifted 4 px right: IoU 0.6
    ]}}}
    out = report.stage_report([pred, {"id": "unknown", "stages": {}}], {"s": sample}, "localize", 64)
    assert out["images"] == 1 and out["boxes_per_image"] == 2.0
    assert out["stuff_recall@0.5"] == 1.0
    assert out["thing_recall@0.5"] == 0.5 and out["thing_recall@0.7"] == 0.0
    assert out["all_recall@0.5"] == pytest.approx(0.667, abs=1e-3)
    # circle centre (40, 40) vs predicted (44, 40): 4 px; square centre (8, 56) nearest is the circle's (44, 40)
    p10, p50, p90 = out["thing_centre_error_px_p10_p50_p90"]
    assert p50 == pytest.approx((4.0 + 39.395) / 2, abs=0.01)
    assert report.stage_report([pred], {"s": sample}, "caption", 64)["all_recall@0.5"] == 0.0  # stage not run
