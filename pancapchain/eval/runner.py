"""Evaluate a prediction file against a GT file: PancapScore (offline or judge), masks, caption metrics.

``evaluate`` never stops on a bad record: predictions without a usable id are skipped and counted, GT
images without a prediction or with an unusable one are scored zero with a warning, and every count
ends up in metrics.json. ``write_outputs`` writes metrics.json, per_image.json and summary.md atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pancapchain.data.boxes import BoxCodec, find_box_groups, group_frame
from pancapchain.data.caption_parser import strip_boxes
from pancapchain.data.io import SkipReport
from pancapchain.data.prediction import Prediction
from pancapchain.data.sapancap import sample_id
from pancapchain.errors import UserError
from pancapchain.eval.caption_metrics import caption_metrics
from pancapchain.eval.embed import Embedder, get_embedder
from pancapchain.eval.grounding import evaluate_masks
from pancapchain.eval.inputs import GTRecord, load_gt, load_predictions
from pancapchain.eval.judge import JudgeBackend
from pancapchain.eval.masks import mask_ap, png_average_recall
from pancapchain.eval.matching import MatchConfig, wordnet_status
from pancapchain.eval.offline import (
    OfflineConfig,
    OfflineItems,
    SupportScorer,
    finish_offline,
    items_from_caption,
    items_from_sample,
    prepare_offline,
)
from pancapchain.eval.scores import ImageResult, failed_image, macro_mean, pancapscore

SQUARE_ASSUMPTION = 1000


@dataclass
class EvalOptions:
    """Everything that changes the numbers (written into metrics.json)."""

    judge: str = "offline"  # "offline" or "hf:PATH"
    embed_model: str | None = None  # local sentence-transformers folder; None = packaged all-MiniLM-L6-v2
    match: MatchConfig = field(default_factory=MatchConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    image_root: str | None = None
    prompts_dir: str | None = None
    judge_batch_size: int = 4
    judge_max_new_tokens: int = 2048
    judge_device: str = "cpu"
    judge_cache: str | None = None  # default OUT/judge_cache; share one folder to reuse GT-side answers
    box_rules: str = "official"  # how caption box groups are read: "official" (step 0) or "lenient"
    caption_metrics: bool = True
    meteor: bool = True
    meteor_jar: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult:
    images: list[ImageResult]
    metrics: dict[str, Any]
    frames: dict[str, dict[str, Any]] = field(default_factory=dict)  # GT id -> {"image", "width", "height"}


@dataclass
class _Pair:
    gt: GTRecord
    pred: Prediction
    width: int
    height: int


def _align(
    gts: list[GTRecord], preds: dict[str, Prediction], pred_report: SkipReport, box_rules: str
) -> tuple[list[_Pair], dict[str, ImageResult], list[str]]:
    """GT/prediction pairs to score, zero results for the rest, and notes (e.g. size assumptions)."""
    pairs, failed, notes = [], {}, []
    preds = rekey_predictions(gts, preds, pred_report)
    assumed = 0
    for gt in gts:
        pred = preds.get(gt.id)
        if pred is None:
            failed[gt.id] = failed_image(gt.id, "missing prediction")
            continue
        if pred.problem:
            failed[gt.id] = failed_image(gt.id, pred.problem)
            continue
        width, height = gt.width or SQUARE_ASSUMPTION, gt.height or SQUARE_ASSUMPTION
        if gt.width is None and any(group_frame(g, box_rules) == "grid" for g in find_box_groups(pred.caption)):
            assumed += 1
        pairs.append(_Pair(gt, pred, width, height))
    if assumed:
        notes.append(
            f"{assumed} prediction(s) use <box> grid boxes but the GT gives no image size: the image was assumed "
            "square (grid/1000 = normalized); pass --image-root for exact conversion"
        )
    return pairs, failed, notes


def rekey_predictions(gts: list[GTRecord], preds: dict[str, Prediction], report: SkipReport) -> dict[str, Prediction]:
    """Predictions keyed by GT id: a prediction ``id`` may be the GT id, the GT's image path
    (``sam/sa_000045/sa_507752.jpg``) or that path's derived id; unknown ids and second claims are skipped."""
    alias: dict[str, str] = {}
    for g in gts:
        if g.image:
            alias.setdefault(g.image, g.id)
            alias.setdefault(sample_id(g.image), g.id)
    alias.update({g.id: g.id for g in gts})
    keyed: dict[str, Prediction] = {}
    for pred_id, pred in preds.items():
        gt_id = alias.get(pred_id)
        if gt_id is None:
            report.skip(pred_id, "unknown id: no GT image with this id or image path")
        elif gt_id in keyed:
            report.skip(pred_id, f"duplicate: GT image {gt_id} already has a prediction (first one kept)")
        else:
            keyed[gt_id] = pred
    return keyed


def grid_boxes_to_normalized(text: str, width: int, height: int, box_rules: str = "official") -> str:
    """Rewrite the groups ``box_rules`` reads as grid (or bins) as normalized ``[[x.xxx, ...]]`` (official
    step 0); other groups are left exactly as written."""
    codec = BoxCodec("normalized")
    pieces, last = [], 0
    for group in find_box_groups(text):
        if group_frame(group, box_rules) != "normalized":
            boxes = codec.decode_group(group, width, height, box_rules)
            pieces += [text[last : group.start], codec.encode(boxes, width, height)]
            last = group.end
    return "".join(pieces) + text[last:]


def _offline_results(pairs: list[_Pair], embedder: Embedder, options: EvalOptions,
                     clock: _Stopwatch) -> list[ImageResult]:
    parsed: dict[tuple[str, int, int], OfflineItems] = {}

    def from_caption(caption: str, width: int, height: int) -> OfflineItems:
        # a caption repeated (a prediction equal to a GT caption, copied captions) is parsed once; items are read-only
        key = (caption, width, height)
        if key not in parsed:
            parsed[key] = items_from_caption(caption, width, height, options.box_rules)
        return parsed[key]

    gt_items = [items_from_sample(p.gt.sample, options.box_rules) if p.gt.sample
                else from_caption(p.gt.caption, p.width, p.height) for p in pairs]
    pred_items = [from_caption(p.pred.caption, p.width, p.height) for p in pairs]
    clock.lap("offline: parse captions")
    all_tags = sorted({e.tag for items in gt_items + pred_items for e in items.entities})
    if all_tags:
        embedder.encode(all_tags)  # one batched pass; the per-image matching then hits the cache
    clock.lap("offline: embed tags (+ model load)")
    prepared = [prepare_offline(pair.gt.id, g, p, embedder, options.match)
                for pair, g, p in tqdm(list(zip(pairs, gt_items, pred_items)), desc="offline matching", unit="img")]
    clock.lap("offline: match entities")
    texts = sorted(set().union(*(SupportScorer.open_texts(prep.flat) for prep in prepared)))
    if texts:
        embedder.encode(texts)  # every distinct open sentence once, in big batches; scoring then hits the cache
    clock.lap(f"offline: embed {len(texts)} item texts")
    results = [finish_offline(prep, embedder, options.offline) for prep in prepared]
    clock.lap("offline: support scores")
    return results


def _judge_results(pairs: list[_Pair], embedder: Embedder, options: EvalOptions, out_dir: Path | None,
                   backend: JudgeBackend | None = None) -> tuple[list[ImageResult], dict[str, Any]]:
    from pancapchain.eval.judge import HFJudge, JudgeCache
    from pancapchain.eval.judge_pipeline import JudgeImage, run_judge
    from pancapchain.eval.judge_prompts import JudgePrompts

    prompts = JudgePrompts.load(options.prompts_dir)
    if backend is None:
        backend = HFJudge(options.judge.removeprefix("hf:"), prompts.system, options.judge_batch_size,
                          options.judge_max_new_tokens, options.judge_device)
    cache_dir = Path(options.judge_cache) if options.judge_cache else (out_dir / "judge_cache" if out_dir else None)
    cache = JudgeCache(cache_dir, f"{prompts.fingerprint()}|{backend.name}") if cache_dir else None
    images = [
        JudgeImage(p.gt.id, grid_boxes_to_normalized(p.gt.caption, p.width, p.height, options.box_rules),
                   grid_boxes_to_normalized(p.pred.caption, p.width, p.height, options.box_rules))
        for p in pairs
    ]
    results, stats = run_judge(images, backend, prompts, embedder, cache, options.match)
    return results, {**stats, "judge": backend.name, "prompts_fingerprint": prompts.fingerprint()}


def _mask_metrics(pairs: list[_Pair], embedder: Embedder, options: EvalOptions,
                  by_id: dict[str, ImageResult]) -> tuple[dict[str, Any] | None, list[str]]:
    """mIoU, mask AP and PNG AR over images whose GT sample has masks (None when nothing to score), notes."""
    if not any(p.pred.masks for p in pairs):
        return None, []
    mious, ap_images, phrases = [], [], []
    for p in pairs:
        if p.gt.sample is None:
            continue
        pred_entities = items_from_caption(p.pred.caption, p.width, p.height, options.box_rules).entities
        res = evaluate_masks(p.gt.sample, pred_entities, p.pred.masks, embedder, options.match)
        by_id[p.gt.id].warnings.extend(res.warnings)
        if res.miou is not None:
            mious.append(res.miou)
            ap_images.append(res.ap_image)
            phrases.extend(res.phrases)
            by_id[p.gt.id].counts["mask_miou_x1000"] = round(1000 * res.miou)
    if not mious:
        return None, ["mask metrics skipped: predictions carry masks but no GT sample has entity masks"]
    metrics = {"images": len(mious), "mIoU": sum(mious) / len(mious), "mask_AP": mask_ap(ap_images),
               "PNG_AR": png_average_recall(phrases)}
    return metrics, [f"masks: mIoU / AP / PNG AR over the {len(mious)} images whose GT has entity masks"]


def _caption_scores(pairs: list[_Pair], failed: dict[str, ImageResult], gts: list[GTRecord],
                    options: EvalOptions) -> tuple[dict[str, float] | None, list[str]]:
    if not options.caption_metrics:
        return None, ["caption metrics disabled"]
    hyps = {p.gt.id: strip_boxes(p.pred.caption) for p in pairs}
    hyps.update({image_id: "" for image_id in failed})
    refs = {g.id: [strip_boxes(g.caption)] for g in gts if g.caption.strip()}
    hyps = {k: v for k, v in hyps.items() if k in refs}
    if not hyps:
        return None, ["caption metrics skipped: no GT caption"]
    return caption_metrics(refs, hyps, options.meteor, options.meteor_jar)


def evaluate(
    pred_path: str | Path,
    gt_path: str | Path,
    options: EvalOptions | None = None,
    out_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    judge_backend: JudgeBackend | None = None,
) -> EvalResult:
    """Score ``pred_path`` against ``gt_path``; ``embedder``/``judge_backend`` may be injected (tests)."""
    options = options or EvalOptions()
    if options.judge != "offline" and not options.judge.startswith("hf:"):
        raise ValueError(f"--judge must be 'offline' or 'hf:PATH', got {options.judge!r}")
    clock = _Stopwatch()
    gts, gt_report = load_gt(gt_path, options.image_root)
    _refuse_empty(gts, gt_report, f"--gt {gt_path}", "GT record")
    preds, pred_report = load_predictions(pred_path)
    _refuse_empty(preds, pred_report, f"--pred {pred_path}", "prediction")
    pairs, failed, notes = _align(gts, preds, pred_report, options.box_rules)
    clock.lap("read inputs")
    embedder = embedder or get_embedder(options.embed_model)
    judge_stats = None
    if options.judge == "offline":
        scored = _offline_results(pairs, embedder, options, clock)
    else:
        scored, judge_stats = _judge_results(pairs, embedder, options, Path(out_dir) if out_dir else None,
                                             judge_backend)
    clock.lap("pancapscore" if options.judge != "offline" else "offline: assemble")
    by_id = {r.id: r for r in scored} | failed
    for p in pairs:
        if not p.pred.caption.strip():
            by_id[p.gt.id].warnings.append("empty predicted caption")
        by_id[p.gt.id].warnings.extend(p.pred.warnings)
    images = [by_id[g.id] for g in gts]
    masks, mask_notes = _mask_metrics(pairs, embedder, options, by_id)
    clock.lap("masks")
    captions, caption_notes = _caption_scores(pairs, failed, gts, options)
    clock.lap("caption metrics")
    metrics = _metrics(images, options, embedder, gt_report, pred_report, notes + mask_notes + caption_notes)
    metrics.update({"mask_metrics": masks, "caption_metrics": captions, "judge_calls": judge_stats,
                    "seconds": round(clock.total(), 2), "stage_seconds": clock.laps})
    frames = {g.id: {"image": g.image, "width": g.width, "height": g.height} for g in gts}
    return EvalResult(images, metrics, frames)


def judge_shard(
    pred_path: str | Path, gt_path: str | Path, options: EvalOptions, out_dir: str | Path | None,
    select: Callable[[list], list], embedder: Embedder | None = None, judge_backend: JudgeBackend | None = None,
) -> dict[str, Any]:
    """Judge only ``select(pairs)`` into the response cache: one rank's share of a data-parallel eval, after
    which :func:`evaluate` finds every answer cached. Returns the judge call statistics."""
    gts, _ = load_gt(gt_path, options.image_root)
    preds, pred_report = load_predictions(pred_path)
    pairs, _, _ = _align(gts, preds, pred_report, options.box_rules)
    embedder = embedder or get_embedder(options.embed_model)
    _, stats = _judge_results(select(pairs), embedder, options, Path(out_dir) if out_dir else None, judge_backend)
    return stats


def _refuse_empty(records, report: SkipReport, what: str, kind: str) -> None:
    """A file without one usable record is the wrong file, not a score of zero."""
    if records:
        return
    example = f"; e.g. {report.skipped[0][0]}: {report.skipped[0][1]}" if report.skipped else ""
    raise UserError(f"{what}: no usable {kind} ({report.n_skipped} skipped{example})")


class _Stopwatch:
    """Seconds per named stage (the embedding model loads lazily, inside the first stage that needs it)."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _metrics(images: list[ImageResult], options: EvalOptions, embedder: Embedder, gt_report: SkipReport,
             pred_report: SkipReport, notes: list[str]) -> dict[str, Any]:
    mean = macro_mean(r.scores for r in images)
    status_counts: dict[str, int] = {}
    for r in images:
        key = r.status.split(":")[0]
        status_counts[key] = status_counts.get(key, 0) + 1
    mode_note = (
        "offline mode: tag/loc follow the official matcher exactly; attribute/relation/global come from "
        "sentence-level extraction and embedding support, an approximation of the LLM judge"
        if options.judge == "offline" else
        "judge mode: official protocol with greedy decoding (the official run samples; numbers are comparable, not identical)"
    )
    return {
        "mode": options.judge,
        "n_images": len(images),
        "pancapscore": round(pancapscore(mean), 4),
        "scores": {dim: prf.to_dict(scale=100.0) for dim, prf in mean.items()},
        "image_status": status_counts,
        "images_with_warnings": sum(1 for r in images if r.warnings),
        "embedder": embedder.name,
        "synonyms": wordnet_status(options.match.use_wordnet),
        "notes": [mode_note, *notes],
        "skipped": {"gt": gt_report.to_dict(), "predictions": pred_report.to_dict()},
        "options": options.to_dict(),
    }
