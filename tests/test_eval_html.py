"""``pancapchain eval --html``: the report's entity statuses come from the scorer's matching (hand-made case
with one matched, one box-off, one missed and one extra entity), images or blank canvases, the card cap and
pages, the histograms, and a headless Chromium screenshot that is not blank."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pancapchain.cli import main
from pancapchain.eval.html_plots import histogram_counts
from pancapchain.eval.html_report import STATUS_COLORS, render_html
from pancapchain.eval.runner import EvalOptions, evaluate

GT_ENTITIES = [
    {"id": 0, "tag": "red circle", "box": [0.1, 0.1, 0.3, 0.3], "attributes": ["entity is red"]},
    {"id": 1, "tag": "blue square", "box": [0.5, 0.1, 0.7, 0.3]},
    {"id": 2, "tag": "green tree", "box": [0.1, 0.6, 0.4, 0.9]},
]
# red circle: same tag and box (matched); blue square: same tag, box elsewhere (box off);
# green tree: not predicted (missed); yellow car: not in the GT (extra)
PRED = ("A red circle [[0.100, 0.100, 0.300, 0.300]] is left of a blue square [[0.000, 0.600, 0.100, 0.700]]. "
        "A yellow car [[0.600, 0.600, 0.900, 0.900]] is parked.")


def _write_case(folder: Path, n_images: int = 1, with_image: bool = True) -> tuple[Path, Path]:
    gt_lines, pred_lines = [], []
    for k in range(n_images):
        image_id = f"img{k}"
        gt_lines.append(json.dumps({"id": image_id, "image": f"{image_id}.png", "width": 200, "height": 100,
                                    "caption": "x", "entities": GT_ENTITIES}))
        pred_lines.append(json.dumps({"id": image_id, "caption": PRED}))
    (folder / "gt.jsonl").write_text("\n".join(gt_lines) + "\n")
    (folder / "pred.jsonl").write_text("\n".join(pred_lines) + "\n")
    if with_image:
        img = Image.new("RGB", (200, 100), (200, 200, 160))
        ImageDraw.Draw(img).ellipse((20, 10, 60, 30), fill=(220, 30, 30))
        img.save(folder / "img0.png")
    return folder / "pred.jsonl", folder / "gt.jsonl"


def _evaluate(pred: Path, gt: Path):
    return evaluate(pred, gt, EvalOptions(embed_model="hashing", caption_metrics=False))


def test_cli_html_report_counts_matched_missed_extra(tmp_path, capsys):
    pred, gt = _write_case(tmp_path)
    out = tmp_path / "out"
    code = main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--embed-model", "hashing",
                 "--no-caption-metrics", "--html"])
    assert code == 0 and f"wrote {out / 'report.html'}" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert 'data-matched="1" data-box-off="1" data-missed="1" data-extra="1"' in html
    for status in ("matched", "box-off", "missed", "extra"):
        assert f'id="total-{status}">1<' in html
    rows = re.findall(r'<tr class="ent ([a-z-]+)"><td>([^<]*)</td><td>([^<]*)</td>', html)
    assert rows == [("matched", "G1 red circle", "P1 red circle"), ("box-off", "G2 blue square", "P2 blue square"),
                    ("missed", "G3 green tree", "-"), ("extra", "-", "P3 yellow car")]
    canvas = re.search(r'<svg class="canvas".*?</svg>', html).group(0)
    assert canvas.count("<rect ") == 6 and canvas.count("stroke-dasharray") == 3  # 3 GT solid, 3 predicted dashed
    assert "data:image/jpeg;base64," in html and 'viewBox="0 0 200 100"' in html  # the image, at its own size
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained
    entities = json.loads((out / "per_image.json").read_text())[0]["entities"]
    assert [e["match"] for e in entities["gt"]] == [0, 1, None] and [e["loc_ok"] for e in entities["gt"]] == [
        True, False, False]
    assert [e["match"] for e in entities["pred"]] == [0, 1, None]


def test_blank_canvas_of_the_image_size_when_the_file_is_absent(tmp_path):
    pred, gt = _write_case(tmp_path, with_image=False)
    html = render_html(_evaluate(pred, gt), [tmp_path])
    assert "no image file: blank canvas" in html and "data:image" not in html
    assert 'viewBox="0 0 200 100"' in html and 'fill="#f4f4f4"' in html


def test_card_cap_pages_and_table(tmp_path):
    pred, gt = _write_case(tmp_path, n_images=45, with_image=False)
    result = _evaluate(pred, gt)
    html = render_html(result, [tmp_path], max_images=30)
    assert html.count('<section class="card"') == 30 and html.count('<div class="page"') == 2
    assert "Cards for the first 30 of 45 images" in html
    assert html.count('<a href="#img-') == 30 and html.count("<td>img44</td>") == 1  # uncarded rows: no link
    assert render_html(result, [tmp_path], max_images=0).count('<section class="card"') == 45
    assert 'id="total-missed">45<' in html


def test_histogram_counts():
    assert histogram_counts([0, 5, 10, 10, 99.9, 100, 150, -3], 0, 100, 10) == [3, 2, 0, 0, 0, 0, 0, 0, 0, 3]
    assert histogram_counts([], 0, 410, 41) == [0] * 41


def _screenshot(chromium: str, html: Path, png: Path, profile: Path, timeout: float = 150) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--screenshot={png}", "--window-size=1280,1600", html.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
@pytest.mark.timeout(240)
def test_chromium_screenshot_is_not_blank(tmp_path):
    pred, gt = _write_case(tmp_path)
    html = tmp_path / "report.html"
    html.write_text(render_html(_evaluate(pred, gt), [tmp_path]))
    png = tmp_path / "shot.png"
    _screenshot(shutil.which("chromium"), html, png, tmp_path / "profile")
    with Image.open(png) as shot:
        assert shot.size == (1280, 1600)
        pixels = np.asarray(shot.convert("RGB"), dtype=np.int16).reshape(-1, 3)
    non_white = float((pixels != 255).any(axis=1).mean())
    assert non_white > 0.05 and len(np.unique(pixels, axis=0)) > 50

    def near(color: str) -> int:
        target = np.array([int(color[k : k + 2], 16) for k in (1, 3, 5)])
        return int((np.abs(pixels - target) <= 12).all(axis=1).sum())

    assert all(near(STATUS_COLORS[s]) > 40 for s in STATUS_COLORS)  # every status colour is drawn
