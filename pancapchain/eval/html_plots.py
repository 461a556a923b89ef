"""Inline SVG plots for the HTML evaluation report (no plotting library, no external resources)."""

from __future__ import annotations

from html import escape

PLOT_WIDTH = 360
PLOT_HEIGHT = 170
_MARGIN_LEFT, _MARGIN_BOTTOM, _MARGIN_TOP = 34, 28, 22


def histogram_counts(values: list[float], lo: float, hi: float, bins: int) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [lo, hi]; the top edge belongs to the last bin."""
    counts = [0] * bins
    width = (hi - lo) / bins
    for v in values:
        k = int((min(max(v, lo), hi) - lo) / width)
        counts[min(k, bins - 1)] += 1
    return counts


def histogram_svg(values: list[float], lo: float, hi: float, bins: int, title: str, color: str = "#4c72b0") -> str:
    """A bar histogram with axis ticks at both ends and a dashed line at the mean; ``title`` names it."""
    counts = histogram_counts(values, lo, hi, bins)
    top = max(counts) or 1
    inner_w = PLOT_WIDTH - _MARGIN_LEFT - 8
    inner_h = PLOT_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
    bar_w = inner_w / bins
    base_y = _MARGIN_TOP + inner_h
    parts = [f'<svg class="plot" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{PLOT_WIDTH / 2}" y="14" text-anchor="middle" class="ptitle">{escape(title)}</text>']
    for k, c in enumerate(counts):
        h = inner_h * c / top
        x = _MARGIN_LEFT + k * bar_w
        edge = lo + k * (hi - lo) / bins
        parts.append(f'<rect x="{x + 1:.1f}" y="{base_y - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                     f'fill="{color}"><title>{edge:.0f}-{edge + (hi - lo) / bins:.0f}: {c} images</title></rect>')
    parts += [f'<line x1="{_MARGIN_LEFT}" y1="{base_y}" x2="{_MARGIN_LEFT + inner_w}" y2="{base_y}" stroke="#333"/>',
              f'<line x1="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" x2="{_MARGIN_LEFT}" y2="{base_y}" stroke="#333"/>',
              f'<text x="{_MARGIN_LEFT}" y="{base_y + 14}" text-anchor="middle" class="tick">{lo:g}</text>',
              f'<text x="{_MARGIN_LEFT + inner_w}" y="{base_y + 14}" text-anchor="middle" class="tick">{hi:g}</text>',
              f'<text x="{_MARGIN_LEFT - 4}" y="{_MARGIN_TOP + 8}" text-anchor="end" class="tick">{top}</text>',
              f'<text x="{_MARGIN_LEFT - 4}" y="{base_y}" text-anchor="end" class="tick">0</text>']
    if values:
        mean = sum(values) / len(values)
        mx = _MARGIN_LEFT + inner_w * (mean - lo) / (hi - lo)
        parts += [f'<line x1="{mx:.1f}" y1="{_MARGIN_TOP}" x2="{mx:.1f}" y2="{base_y}" stroke="#c44e52" '
                  'stroke-dasharray="4 3" stroke-width="1.5"/>',
                  f'<text x="{mx:.1f}" y="{base_y + 24}" text-anchor="{_anchor(mx)}" class="tick mean">mean {mean:.1f}</text>']
    parts.append("</svg>")
    return "".join(parts)


def _anchor(x: float) -> str:
    """Text anchor that keeps a label near either end of the plot inside it."""
    return "end" if x > PLOT_WIDTH - 40 else "start" if x < _MARGIN_LEFT + 30 else "middle"
