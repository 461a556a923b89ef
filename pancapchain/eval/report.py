"""Evaluation outputs: metrics.json, per_image.json and summary.md (all written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pancapchain.data.io import atomic_write_json, atomic_write_text
from pancapchain.eval.runner import EvalResult
from pancapchain.eval.scores import DIMENSION_TITLES, DIMENSIONS


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def summary_table(metrics: dict[str, Any]) -> str:
    """Markdown: the PancapScore table (x100), then mask and caption metrics, counts and notes."""
    lines = [
        f"# Evaluation ({metrics['mode']}), {metrics['n_images']} images",
        "",
        "| Dimension | Precision | Recall | F1 |",
        "|---|---:|---:|---:|",
    ]
    for dim in DIMENSIONS:
        s = metrics["scores"][dim]
        lines.append(f"| {DIMENSION_TITLES[dim]} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} |")
    lines += ["", f"**PancapScore** = tag + loc + attr + rel + 0.1 x global = **{_fmt(metrics['pancapscore'])}** (max 410)"]
    masks = metrics.get("mask_metrics")
    if masks:
        ar = masks["PNG_AR"]
        lines += ["", "| Masks | value |", "|---|---:|",
                  f"| mIoU (greedy, {masks['images']} images) | {_fmt(100 * masks['mIoU'])} |",
                  f"| mask AP / AP50 | {_fmt(100 * masks['mask_AP']['AP'])} / {_fmt(100 * masks['mask_AP']['AP50'])} |"]
        lines += [f"| PNG AR {k} | {_fmt(100 * ar[k])} |" for k in ("overall", "singular", "plural", "thing", "stuff")]
    captions = metrics.get("caption_metrics")
    if captions:
        lines += ["", "| Caption metric | value |", "|---|---:|"]
        lines += [f"| {k} (x100) | {_fmt(100 * v)} |" for k, v in captions.items()]
    lines += ["", f"Image status: {metrics['image_status']}; images with warnings: {metrics['images_with_warnings']}"]
    skipped = metrics["skipped"]
    lines.append(
        f"Skipped records: GT {len(skipped['gt']['skipped'])}, predictions {len(skipped['predictions']['skipped'])}"
    )
    lines.append(f"Embedder: {metrics['embedder']}; synonyms: {metrics['synonyms']}")
    lines += ["", "Notes:"] + [f"- {n}" for n in metrics["notes"]]
    return "\n".join(lines) + "\n"


def write_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the three result files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = {"metrics": out / "metrics.json", "per_image": out / "per_image.json", "summary": out / "summary.md"}
    atomic_write_json(paths["metrics"], result.metrics)
    atomic_write_json(paths["per_image"], [r.to_dict() for r in result.images])
    atomic_write_text(paths["summary"], summary_table(result.metrics))
    return paths
