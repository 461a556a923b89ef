"""Batch inference over a dataset: resumable, append-only JSONL with whole-line atomic appends.

Each finished image is one JSON line appended with a single ``write`` + ``fsync``. A run killed midway
leaves at most one partial last line; on restart it is cut off, ids already written are skipped, and the
rest is appended, so nothing is duplicated or lost.

Resume touches only files pancapchain wrote (see :mod:`pancapchain.infer.resume`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pancapchain.data.boxes import BoxCodec
from pancapchain.data.io import SkipReport, atomic_write_json, load_samples
from pancapchain.data.schema import SampleError, resolve_image
from pancapchain.data.stages import ground_truth_answers
from pancapchain.errors import UserError
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import GenerationOptions
from pancapchain.infer.parallel import run_sharded
from pancapchain.infer.resume import append_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class InferItem:
    id: str
    path: Path
    image: str  # as given in the data (relative to the root)
    given: dict[str, str] | None = None  # stage -> answer used instead of generating it (--oracle-through)


def list_items(
    data: str | Path, image_root: str | Path | None, report: SkipReport,
    oracle: tuple[BoxCodec, str, str, str] | None = None,
) -> list[InferItem]:
    """Items from a panoptic JSONL (ids and relative image paths) or from a directory of images (id = stem).

    ``oracle`` = (the model's box codec, last stage, item_order, label_answer): each item carries its ground-truth
    answers for the stages up to that one (:func:`pancapchain.data.stages.ground_truth_answers`); needs a JSONL."""
    data = Path(data)
    if data.is_dir() and oracle:
        raise UserError(f"--oracle-through needs a panoptic JSONL with entities, not the image folder {data}")
    if data.is_dir():
        return _folder_items(data, report)
    samples, loaded = load_samples(data)
    report.skipped.extend(loaded.skipped)
    root = Path(image_root) if image_root else data.parent
    items = []
    for s in samples:
        try:
            given = (ground_truth_answers(s, oracle[0], oracle[1], item_order=oracle[2], label_answer=oracle[3])
                     if oracle else None)
            items.append(InferItem(s.id, resolve_image(root, s.image, s.id), s.image, given))
        except SampleError as err:
            report.skip(s.id, f"bad image path: {err.problem}")
    return items


def _folder_items(folder: Path, report: SkipReport) -> list[InferItem]:
    """One item per image under ``folder`` (id = path without suffix). Two images that share an id (``a.png``
    and ``a.jpg``) would write one output row: the later one is skipped and reported."""
    items: dict[str, InferItem] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(folder)
        item_id = rel.with_suffix("").as_posix()
        if item_id in items:
            report.skip(rel.as_posix(), f"duplicate: id {item_id} is already {items[item_id].image}")
            continue
        items[item_id] = InferItem(item_id, path, rel.as_posix())
    return list(items.values())


def _batches(items: list[InferItem], size: int) -> Iterator[list[InferItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _open(item: InferItem, report: SkipReport) -> ChainState | None:
    try:
        with Image.open(item.path) as img:
            return ChainState(item.id, img.convert("RGB"))
    except Exception as err:  # a bad image is reported and skipped, the run goes on
        report.skip(item.id, f"unreadable image {item.path}: {type(err).__name__}: {err}")
        return None


def run_inference(
    chain: PancapChain,
    data: str | Path,
    out: str | Path,
    batch_size: int = 8,
    options: GenerationOptions | None = None,
    image_root: str | Path | None = None,
    limit: int = 0,
    plan: str = "chain",
    state=None,
    oracle_through: str | None = None,
) -> dict | None:
    """Chain every image of ``data`` into ``out`` (JSONL); returns a summary also written to ``<out>.summary.json``.

    ``plan``: which stages run (``pancapchain.infer.chain.PLANS``: chain, no-discover, direct). ``state``: an
    accelerate ``PartialState`` of a multi-process launch (each rank chains its shard, rank 0 merges and gets
    the summary; the other ranks get None), see :mod:`pancapchain.infer.parallel`. ``oracle_through``: the
    stages up to this one take the ground truth's answers instead of generating them (chain plans only).
    """
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be >= 1")
    out = Path(out)
    report = SkipReport(what="images")
    if oracle_through and plan == "direct":
        raise UserError("--oracle-through gives chain stages: direct captioning has none to give")
    oracle = (chain.codec, oracle_through, chain.item_order, chain.label_answer) if oracle_through else None
    items = list_items(data, image_root, report, oracle)
    if limit > 0:
        items = items[:limit]

    def work(indices: list[int], path: Path) -> dict:
        return _chain_items(chain, [items[i] for i in indices], path, batch_size, options, plan, report)

    summaries = run_sharded(out, "infer", [it.id for it in items], state, work)
    if summaries is None:
        return None
    summary = merge_summaries(summaries, len(items))
    summary["plan"] = plan
    summary["oracle_through"] = oracle_through  # stages given from the ground truth (None: all generated)
    summary["options"] = asdict(options or GenerationOptions())  # the decoding settings, next to the outputs
    atomic_write_json(out.with_suffix(".summary.json"), summary)
    return summary


def _chain_items(chain: PancapChain, todo: list[InferItem], path: Path, batch_size: int,
                 options: GenerationOptions | None, plan: str, report: SkipReport) -> dict:
    """Chain ``todo`` in batches, appending one row per image to ``path``; this process's summary."""
    timings: dict[str, float] = {}
    truncated: dict[str, int] = {}
    written = 0
    with tqdm(total=len(todo), desc="chain", unit="img") as bar:
        for batch in _batches(todo, batch_size):
            states = [s for s in (_open(it, report) for it in batch) if s is not None]
            if states:
                given = {it.id: it.given or {} for it in batch}
                for item, pred in zip([it for it in batch if it.id in {s.id for s in states}],
                                      chain.run(states, options, [given[s.id] for s in states],
                                                timings=timings, plan=plan)):
                    pred.image = item.image
                    append_line(path, pred.to_dict())
                    written += 1
                    for stage, record in pred.stages.items():
                        truncated[stage] = truncated.get(stage, 0) + int(record.truncated)
            bar.update(len(batch))
    return {"written": written, "skipped": report.to_dict()["skipped"], "timings": timings, "truncated": truncated}


def merge_summaries(summaries: list[dict], images_total: int) -> dict:
    """One run summary from every rank's: counts and seconds summed, skips listed once (each rank reads the
    same data file, so its unusable records are reported by every rank)."""
    timings: dict[str, float] = {}
    truncated: dict[str, int] = {}
    skipped: list = []
    for s in summaries:
        for key, value in s["timings"].items():
            timings[key] = timings.get(key, 0.0) + value
        for key, value in s["truncated"].items():
            truncated[key] = truncated.get(key, 0) + value
        skipped.extend(entry for entry in s["skipped"] if entry not in skipped)
    written = sum(s["written"] for s in summaries)
    return {
        "images_total": images_total,
        "already_done": sum(s["already_done"] for s in summaries),
        "written": written,
        "skipped": skipped,
        "seconds_per_stage": {k: round(v, 3) for k, v in timings.items()},
        "seconds_per_image": round(sum(timings.values()) / max(1, written), 4),
        "truncated_per_stage": truncated,
        "processes": len(summaries),
    }
