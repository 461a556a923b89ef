"""Ground a given narrative (DiffPNG-style): a mask for every boxed phrase of a caption, teacher-forced.

The caption's own mentions become the earlier stages' outputs (boxes, tags, nothing missing), so the
stage-4 prompt is exactly what the chain would have built for them; no token is generated. Optional
DiffPNG SMR refinement replaces each mask by the union of the candidate masks it agrees with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pancapchain.data.boxes import BoxCodec, strict_convert_text
from pancapchain.data.caption_parser import parse_caption
from pancapchain.data.io import SkipReport, atomic_write_json, load_samples
from pancapchain.data.schema import SampleError, resolve_image
from pancapchain.data.stage_parse import StageItem, format_items
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.masks import refine_with_candidates
from pancapchain.infer.parallel import run_sharded
from pancapchain.infer.resume import append_line
from pancapchain.mask.refine import candidate_masks


def given_stages(chain: PancapChain, caption: str, width: int, height: int) -> dict[str, str]:
    """Stage outputs implied by a caption with inline boxes (any box format, checked strictly: a value out of
    its format's range raises ``BoxFormatError`` naming it, never a silent rescale)."""
    normalized = strict_convert_text(caption, width, height, BoxCodec("normalized"))
    mentions = parse_caption(normalized, width, height).mentions
    items = [StageItem(m.tag or "entity", m.boxes) for m in mentions]
    boxes_only = [StageItem(None, it.boxes) for it in items]
    return {
        "localize": format_items(boxes_only, chain.codec, width, height),
        "label": format_items(items, chain.codec, width, height),
        "discover": format_items([], chain.codec, width, height),
        "caption": strict_convert_text(caption, width, height, chain.codec),
    }


def ground(
    chain: PancapChain, image: Image.Image, caption: str, image_id: str = "image", candidates: Sequence | None = None,
    tau: float = 0.5,
) -> dict:
    """The chain's result dict for a given caption: entities (both box formats) and one mask per entity."""
    if chain.masks is None:
        raise ValueError("this model has no mask head (train with mask.enabled=true)")
    state = ChainState(image_id, image.convert("RGB"))
    chain.run([state], given=[given_stages(chain, caption, state.width, state.height)])
    if candidates:
        refine_with_candidates(state.masks, list(candidates), tau)
    return chain.result(state)


def ground_dataset(
    chain: PancapChain, data: str | Path, out: str | Path, image_root: str | Path | None = None,
    candidates: dict | None = None, tau: float = 0.5, auto_candidates: Callable[[Image.Image], list] | None = None,
    state=None,
) -> SkipReport | None:
    """Ground every sample's own caption; appends results to ``out`` (resumable), scoreable by ``eval``.

    ``auto_candidates`` (image -> ``(H, W)`` bool masks, e.g. SAM automatic masks) replaces ``candidates``.
    ``state``: an accelerate ``PartialState`` of a multi-process launch (each rank grounds its shard, rank 0
    merges and gets the report, the others None; see :mod:`pancapchain.infer.parallel`)."""
    samples, report = load_samples(data)
    root = Path(image_root) if image_root else Path(data).parent

    def work(indices: list[int], path: Path) -> dict:
        for sample in tqdm([samples[i] for i in indices], desc="ground", unit="img"):
            result = _ground_sample(chain, sample, root, candidates, tau, auto_candidates, report)
            if result is not None:
                append_line(path, result)
        return {"skipped": report.skipped}

    summaries = run_sharded(out, "ground", [s.id for s in samples], state, work)
    if summaries is None:
        return None
    report.skipped = list(dict.fromkeys(tuple(entry) for s in summaries for entry in s["skipped"]))
    report.kept = len(samples) - report.n_skipped
    atomic_write_json(Path(out).with_suffix(".report.json"), report.to_dict())
    return report


def _ground_sample(chain: PancapChain, sample, root: Path, candidates: dict | None, tau: float,
                   auto_candidates: Callable | None, report: SkipReport) -> dict | None:
    """One sample's grounded result row, or None (the reason goes to ``report``)."""
    try:
        with Image.open(resolve_image(root, sample.image, sample.id)) as img:
            cands = candidate_masks(candidates[sample.id], img.height, img.width, sample.id) \
                if candidates and sample.id in candidates else None
            cands = auto_candidates(img) if auto_candidates else cands
            result = ground(chain, img, sample.caption, sample.id, cands, tau)
    except (OSError, SampleError, ValueError) as err:
        report.skip(sample.id, f"{type(err).__name__}: {err}")
        return None
    result["image"] = sample.image
    return result
