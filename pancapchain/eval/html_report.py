"""report.html: one self-contained page a person can look through (inline SVG / JPEG, no external resource).

Top: the run's scores, entity totals (matched / missed / extra) and histograms of the per-image scores;
then a table of every image; then one card per image (the first ``max_images``, 20 per page): the image
(or a blank canvas of its size), GT boxes solid and predicted boxes dashed, coloured by the status the
scorer's own matching gave them (``ImageResult.entities``, see ``matching.entity_layout``):

* matched: GT and predicted entity paired, boxes overlap (IoU >= threshold) -> "location ok";
* matched, box off: the tags paired but the boxes do not overlap enough;
* missed: a GT entity with no predicted partner; extra: a predicted entity with no GT partner.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from pancapchain.data.io import atomic_write_text
from pancapchain.eval.html_plots import histogram_svg
from pancapchain.eval.runner import EvalResult
from pancapchain.eval.scores import DIMENSION_TITLES, DIMENSIONS, ImageResult

STATUS_COLORS = {"matched": "#1a9850", "box off": "#e08214", "missed": "#d73027", "extra": "#7b3294"}
STATUS_TITLES = {"matched": "matched (location ok)", "box off": "matched, box off", "missed": "missed (GT only)",
                 "extra": "extra (prediction only)"}
CARDS_PER_PAGE = 20
THUMB_PIXELS = 512  # longest side of an embedded image
CANVAS_PIXELS = 420  # drawn width of an image card
ASSUMED_SIZE = 1000  # canvas side when the image size is unknown (the evaluation assumes a square too)


# ------------------------------------------------------------------------------------------ entity status


def entity_status(entity: dict, gt_side: bool) -> str:
    """"matched", "box off", "missed" or "extra" of one row of ``ImageResult.entities``."""
    if entity["match"] is None:
        return "missed" if gt_side else "extra"
    return "matched" if entity["loc_ok"] else "box off"


def status_counts(result: ImageResult) -> dict[str, int]:
    """Entities per status in one image (a matched pair counts once)."""
    counts = dict.fromkeys(STATUS_COLORS, 0)
    for e in result.entities.get("gt", []):
        counts[entity_status(e, True)] += 1
    for e in result.entities.get("pred", []):
        if e["match"] is None:
            counts["extra"] += 1
    return counts


# ------------------------------------------------------------------------------------------------ images


def find_image(relative: str | None, roots: list[Path]) -> Path | None:
    """The first existing file ``root / relative`` (or ``relative`` itself when absolute)."""
    if not relative:
        return None
    candidates = [Path(relative)] if Path(relative).is_absolute() else [root / relative for root in roots]
    return next((c for c in candidates if c.is_file()), None)


def image_data_uri(path: Path) -> tuple[str, int, int] | None:
    """(JPEG data URI of a thumbnail, original width, original height), or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            size = img.size
            thumb = img.convert("RGB")
            thumb.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
            buf = io.BytesIO()
            thumb.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), size[0], size[1]


# -------------------------------------------------------------------------------------------------- cards


def _box_svg(entity: dict, label: str, status: str, width: int, height: int, scale: float, dashed: bool) -> str:
    x1, y1, x2, y2 = entity["box"]
    x, y, w, h = x1 * width, y1 * height, max((x2 - x1) * width, 1), max((y2 - y1) * height, 1)
    color = STATUS_COLORS[status]
    dash = f' stroke-dasharray="{6 * scale:.1f} {4 * scale:.1f}"' if dashed else ""
    tip = escape(f"{label} {entity['tag']} ({STATUS_TITLES[status]})")
    ty = y + 11 * scale if dashed else y - 2 * scale if y > 12 * scale else y + 11 * scale
    return (f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" '
            f'stroke="{color}" stroke-width="{2 * scale:.1f}"{dash}/>'
            f'<text x="{x + 2 * scale:.1f}" y="{ty:.1f}" fill="{color}" font-size="{11 * scale:.1f}" '
            f'class="lbl">{escape(label)}</text></g>')


def canvas_svg(result: ImageResult, frame: dict[str, Any], picture: tuple[str, int, int] | None) -> str:
    """The image (or a blank canvas of its size) with every boxed entity drawn in its status colour."""
    width = (picture[1] if picture else frame.get("width")) or ASSUMED_SIZE
    height = (picture[2] if picture else frame.get("height")) or ASSUMED_SIZE
    scale = width / CANVAS_PIXELS
    parts = [f'<svg class="canvas" width="{CANVAS_PIXELS}" height="{round(CANVAS_PIXELS * height / width)}" '
             f'viewBox="0 0 {width} {height}">']
    if picture:
        parts.append(f'<image href="{picture[0]}" x="0" y="0" width="{width}" height="{height}" '
                     'preserveAspectRatio="none"/>')
    else:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f4f4" stroke="#bbb"/>')
    for side, prefix in (("gt", "G"), ("pred", "P")):
        for i, e in enumerate(result.entities.get(side, [])):
            if e["box"] is not None:
                status = entity_status(e, side == "gt")
                parts.append(_box_svg(e, f"{prefix}{i + 1}", status, width, height, scale, side == "pred"))
    parts.append("</svg>")
    return "".join(parts)


def _chip(status: str) -> str:
    return f'<span class="chip" style="background:{STATUS_COLORS[status]}"></span>{escape(STATUS_TITLES[status])}'


def entity_rows(result: ImageResult) -> str:
    """Table rows: each GT entity with its partner (or none), then the extra predicted entities."""
    gt, pred = result.entities.get("gt", []), result.entities.get("pred", [])
    rows = []
    for i, e in enumerate(gt):
        status = entity_status(e, True)
        partner = f"P{e['match'] + 1} {escape(pred[e['match']]['tag'])}" if e["match"] is not None else "-"
        rows.append(f'<tr class="ent {status.replace(" ", "-")}"><td>G{i + 1} {escape(e["tag"])}</td>'
                    f"<td>{partner}</td><td>{_chip(status)}</td></tr>")
    for j, e in enumerate(pred):
        if e["match"] is None:
            rows.append(f'<tr class="ent extra"><td>-</td><td>P{j + 1} {escape(e["tag"])}</td><td>{_chip("extra")}</td></tr>')
    return "".join(rows)


def _score_table(result: ImageResult) -> str:
    head = "".join(f"<th>{DIMENSION_TITLES[d]}</th>" for d in DIMENSIONS)
    cells = ["<th>P / R / F1</th>"] + [
        f"<td>{100 * s.precision:.0f} / {100 * s.recall:.0f} / <b>{100 * s.f1:.1f}</b></td>"
        for s in (result.scores[d] for d in DIMENSIONS)]
    return f'<table class="scores"><tr><th></th>{head}</tr><tr>{"".join(cells)}</tr></table>'


def image_card(result: ImageResult, frame: dict[str, Any], picture: tuple[str, int, int] | None) -> str:
    counts = status_counts(result)
    size_note = "" if picture or frame.get("width") else " · size unknown: square canvas assumed"
    source = "image" if picture else "no image file: blank canvas"
    warn = "".join(f"<li>{escape(w)}</li>" for w in result.warnings)
    data = " ".join(f'data-{k.replace(" ", "-")}="{v}"' for k, v in counts.items())
    return (f'<section class="card" id="img-{escape(result.id)}" {data}>'
            f"<h3>{escape(result.id)} <span class=\"score\">PancapScore {result.overall:.1f}</span> "
            f'<span class="status">{escape(result.status)}</span></h3>'
            f'<p class="meta">{source}{size_note} · GT solid, prediction dashed · '
            + ", ".join(f"{v} {k}" for k, v in counts.items()) + "</p>"
            f'<div class="row">{canvas_svg(result, frame, picture)}<div class="side">{_score_table(result)}'
            f'<table class="ents"><tr><th>GT</th><th>prediction</th><th>status</th></tr>{entity_rows(result)}</table>'
            + (f'<ul class="warn">{warn}</ul>' if warn else "") + "</div></div></section>")


# ------------------------------------------------------------------------------------------------ summary


def _summary(result: EvalResult, totals: dict[str, int]) -> str:
    m = result.metrics
    rows = "".join(f"<tr><td>{DIMENSION_TITLES[d]}</td><td>{m['scores'][d]['precision']:.2f}</td>"
                   f"<td>{m['scores'][d]['recall']:.2f}</td><td><b>{m['scores'][d]['f1']:.2f}</b></td></tr>"
                   for d in DIMENSIONS)
    legend = "".join(f'<span class="legend">{_chip(s)}: <b id="total-{s.replace(" ", "-")}">{totals[s]}</b></span>'
                     for s in STATUS_COLORS)
    return (f"<h1>Evaluation ({escape(str(m['mode']))}), {m['n_images']} images</h1>"
            f'<p class="big">PancapScore <b id="pancapscore">{m["pancapscore"]:.2f}</b> (max 410) · image status '
            f"{escape(str(m['image_status']))} · {m['images_with_warnings']} images with warnings</p>"
            f'<div class="row"><table class="scores"><tr><th>Dimension</th><th>P</th><th>R</th><th>F1</th></tr>'
            f"{rows}</table><div><p>Entities over the run (a matched pair counts once):</p><p>{legend}</p>"
            f"<p>Boxes: GT solid, prediction dashed. Embedder: {escape(str(m['embedder']))}; "
            f"synonyms: {escape(str(m['synonyms']))}</p></div></div>")


def _plots(images: list[ImageResult]) -> str:
    plots = [histogram_svg([r.overall for r in images], 0, 410, 41, "PancapScore per image (0-410)", "#55a868")]
    plots += [histogram_svg([100 * r.scores[d].f1 for r in images], 0, 100, 20, f"{DIMENSION_TITLES[d]} F1 per image")
              for d in DIMENSIONS]
    return f'<h2>Per-image score distributions</h2><div class="plots">{"".join(plots)}</div>'


def _image_table(images: list[ImageResult], carded: set[str]) -> str:
    head = "".join(f"<th>{DIMENSION_TITLES[d]} F1</th>" for d in DIMENSIONS)
    rows = []
    for r in images:
        c = status_counts(r)
        name = f'<a href="#img-{escape(r.id)}">{escape(r.id)}</a>' if r.id in carded else escape(r.id)
        cells = "".join(f"<td>{100 * r.scores[d].f1:.1f}</td>" for d in DIMENSIONS)
        rows.append(f"<tr><td>{name}</td><td>{escape(r.status)}</td><td>{r.overall:.1f}</td>{cells}"
                    f"<td>{c['matched']}</td><td>{c['box off']}</td><td>{c['missed']}</td><td>{c['extra']}</td></tr>")
    return (f'<h2>All images</h2><details><summary>{len(images)} rows</summary><table class="all"><tr><th>id</th>'
            f"<th>status</th><th>PancapScore</th>{head}<th>matched</th><th>box off</th><th>missed</th><th>extra</th>"
            f"</tr>{''.join(rows)}</table></details>")


# ------------------------------------------------------------------------------------------------- page


def render_html(result: EvalResult, image_roots: list[Path] | None = None, max_images: int = 100) -> str:
    """The whole report; ``max_images`` <= 0 draws a card for every image."""
    shown = result.images if max_images <= 0 else result.images[:max_images]
    totals = dict.fromkeys(STATUS_COLORS, 0)
    for r in result.images:
        for k, v in status_counts(r).items():
            totals[k] += v
    cards = []
    for r in shown:
        frame = result.frames.get(r.id, {})
        path = find_image(frame.get("image"), image_roots or [])
        cards.append(image_card(r, frame, image_data_uri(path) if path else None))
    pages = ["".join(cards[k : k + CARDS_PER_PAGE]) for k in range(0, len(cards), CARDS_PER_PAGE)]
    note = (f"<p>Cards for the first {len(shown)} of {len(result.images)} images (--html-images 0 draws all).</p>"
            if len(shown) < len(result.images) else "")
    body = (_summary(result, totals) + _plots(result.images) + _image_table(result.images, {r.id for r in shown})
            + f"<h2>Images</h2>{note}<nav id=\"pager\"></nav>"
            + "".join(f'<div class="page" data-page="{k + 1}">{p}</div>' for k, p in enumerate(pages)))
    return _PAGE.format(title=escape(f"Evaluation, {len(result.images)} images"), css=_CSS, body=body, js=_JS)


def write_html(result: EvalResult, path: str | Path, image_roots: list[Path] | None = None,
               max_images: int = 100) -> Path:
    """Atomically write report.html; returns its path."""
    path = Path(path)
    atomic_write_text(path, render_html(result, image_roots, max_images))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style></head>
<body>{body}<script>{js}</script></body></html>
"""
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:18px 0 6px}h3{font-size:15px;margin:0 0 4px}
.big{font-size:16px}.row{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
table.scores td{text-align:right}.plots{display:flex;flex-wrap:wrap;gap:8px}
.plot{background:#fafafa;border:1px solid #ddd}.ptitle{font-size:12px;font-weight:600}.tick{font-size:10px}
.mean{fill:#c44e52}.chip{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.legend{margin-right:14px;white-space:nowrap}.card{border:1px solid #ddd;padding:10px;margin:10px 0}
.score{color:#1a5e9a;margin-left:8px}.status{color:#777;font-weight:normal;margin-left:8px}.meta{color:#555;margin:2px 0 6px}
.lbl{font-family:sans-serif;font-weight:700;paint-order:stroke;stroke:#fff;stroke-width:0.25em}
.side{flex:1;min-width:380px}.ents{margin-top:8px}.warn{color:#a33}
#pager button{margin:2px;padding:2px 8px}#pager button.on{font-weight:700;background:#dde}
"""
_JS = """
(function(){var pages=document.querySelectorAll('.page'),nav=document.getElementById('pager');
if(pages.length<2)return;
function show(n){pages.forEach(function(p,i){p.style.display=(i===n)?'':'none';});
nav.querySelectorAll('button').forEach(function(b,i){b.className=(i===n)?'on':'';});}
pages.forEach(function(p,i){var b=document.createElement('button');b.textContent='page '+(i+1);
b.onclick=function(){show(i);};nav.appendChild(b);});
function fromHash(){var el=location.hash&&document.getElementById(decodeURIComponent(location.hash.slice(1)));
var p=el&&el.closest('.page');show(p?Array.prototype.indexOf.call(pages,p):0);if(el)el.scrollIntoView();}
window.addEventListener('hashchange',fromHash);fromHash();})();
"""
