"""Pictures of predictions: PNG overlays (boxes with tags, masks when present, the caption) and an index.html."""

from __future__ import annotations

import html
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from pancapchain.data.io import SkipReport, atomic_write_text, iter_jsonl
from pancapchain.data.prediction import Prediction, PredictionError
from pancapchain.data.schema import SampleError, resolve_image
from pancapchain.errors import UserError
from pancapchain.mask.rle import decode_rle

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
MIN_SIDE = 384  # small (synthetic) images are upscaled so tags stay readable


def draw_prediction(image: Image.Image, pred: Prediction) -> Image.Image:
    """The image with masks (translucent), boxes and tags, and the caption below it."""
    scale = max(1.0, MIN_SIDE / min(image.size))
    w, h = round(image.width * scale), round(image.height * scale)
    canvas = image.convert("RGB").resize((w, h), Image.NEAREST)
    overlay = np.asarray(canvas).astype(np.float32)
    boxes = [tuple(e.box) for e in pred.entities]
    for k, entry in enumerate(pred.masks):
        i = boxes.index(tuple(entry["box"])) if tuple(entry.get("box", ())) in boxes else k
        mask = np.asarray(Image.fromarray(decode_rle(entry["rle"], pred.id)).resize((w, h), Image.NEAREST))
        overlay[mask] = 0.55 * overlay[mask] + 0.45 * np.array(PALETTE[i % len(PALETTE)])
    canvas = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, ent in enumerate(pred.entities):
        x1, y1, x2, y2 = (v * s for v, s in zip(ent.box, (w, h, w, h)))
        color = PALETTE[i % len(PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        label = f"{i}: {ent.tag or '?'}"
        tw = draw.textlength(label, font=font)
        draw.rectangle([x1, y1, x1 + tw + 4, y1 + 12], fill=color)
        draw.text((x1 + 2, y1), label, fill=(0, 0, 0), font=font)
    lines = textwrap.wrap(pred.caption, width=max(40, w // 6))
    out = Image.new("RGB", (w, h + 14 * len(lines) + 8), (255, 255, 255))
    out.paste(canvas, (0, 0))
    text = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        text.text((4, h + 4 + 14 * k), line, fill=(0, 0, 0), font=font)
    return out


def visualize(pred_path: str | Path, image_root: str | Path, out_dir: str | Path, limit: int = 0) -> SkipReport:
    """Write ``out_dir/<id>.png`` per prediction and ``out_dir/index.html``; unreadable rows are reported.

    Raises UserError, creating nothing, when no picture at all can be drawn (no rows, no image found).
    """
    out_dir = Path(out_dir)
    report = SkipReport(what="predictions")
    rows = []
    for where, obj in iter_jsonl(pred_path, report):
        try:
            rows.append(Prediction.from_dict(obj, where))
        except PredictionError as err:
            report.skip(where, err.problem)
    if limit > 0:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"--pred {pred_path}: no prediction rows to draw ({report.n_skipped} malformed lines)")
    cards = []
    for pred in tqdm(rows, desc="pictures", unit="img"):
        pid = pred.id
        try:
            path = resolve_image(image_root, pred.image or f"{pid}.png", pid)
            with Image.open(path) as img:
                picture = draw_prediction(img, pred)
        except (OSError, SampleError, KeyError, TypeError, ValueError) as err:
            report.skip(pid, f"{type(err).__name__}: {err}")
            continue
        name = pid.replace("/", "_") + ".png"
        out_dir.mkdir(parents=True, exist_ok=True)
        picture.save(out_dir / name)
        cards.append(_card(name, pred))
    report.kept = len(cards)
    if not cards:
        first = report.skipped[-1] if report.skipped else ("?", "?")
        raise UserError(f"no picture drawn: none of the {len(rows)} predictions could be drawn from --images "
                        f"{image_root} (e.g. {first[0]}: {first[1]}); check --images")
    atomic_write_text(out_dir / "index.html", _page(cards, Path(pred_path).name))
    return report


def _card(name: str, pred: Prediction) -> str:
    stages = "".join(
        f"<details><summary>{html.escape(stage)}{' (truncated)' if s.truncated else ''}</summary>"
        f"<pre>{html.escape(s.raw)}</pre></details>"
        for stage, s in pred.stages.items()
    )
    return (f"<div class='card'><h3>{html.escape(pred.id)}</h3><img src='{html.escape(name)}'>"
            f"<p>{html.escape(pred.caption)}</p>{stages}</div>")


def _page(cards: list[str], title: str) -> str:
    style = ("body{font-family:sans-serif;margin:1em} .card{display:inline-block;vertical-align:top;width:420px;"
             "margin:6px;padding:6px;border:1px solid #ccc} img{max-width:100%} pre{white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(cards)}</body></html>\n")


