"""Batch inference over a dataset: resumable, append-only JSONL with whole-line atomic appends.

Each finished image is one JSON line appended with a single ``write`` + ``fsync``. A run killed midway
leaves at most one partial last line; on restart it is cut off, ids already written are skipped, and the
rest is appended, so nothing is duplicated or lost.

Resume touches only files pancapchain wrote: the first run writes a marker beside the output
(``preds.jsonl.pancapchain.json``). An existing file without the marker is refused (nothing is cut or
appended), unless it is a complete predictions file of an earlier version (every line a JSON row with
``id`` and ``stages``, the last line complete): such a file is adopted and gets its marker.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pancapchain.data.io import SkipReport, atomic_write_json, load_samples
from pancapchain.data.schema import SampleError, resolve_image
from pancapchain.errors import OutputOwnershipError
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import GenerationOptions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MARKER_FORMAT = "pancapchain-jsonl/1"
LEGACY_ROW_KEYS = ("id", "stages")  # what every row written by earlier versions of infer/ground carries


@dataclass(frozen=True)
class InferItem:
    id: str
    path: Path
    image: str  # as given in the data (relative to the root)


def list_items(data: str | Path, image_root: str | Path | None, report: SkipReport) -> list[InferItem]:
    """Items from a panoptic JSONL (ids and relative image paths) or from a directory of images (id = stem)."""
    data = Path(data)
    if data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return [InferItem(p.relative_to(data).with_suffix("").as_posix(), p, p.relative_to(data).as_posix())
                for p in files]
    samples, loaded = load_samples(data)
    report.skipped.extend(loaded.skipped)
    root = Path(image_root) if image_root else data.parent
    items = []
    for s in samples:
        try:
            items.append(InferItem(s.id, resolve_image(root, s.image, s.id), s.image))
        except SampleError as err:
            report.skip(s.id, f"bad image path: {err.problem}")
    return items


def marker_path(out: str | Path) -> Path:
    """The marker that says ``out`` was written by pancapchain: ``<name>.pancapchain.json`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".pancapchain.json")


def _has_marker(out: Path) -> bool:
    try:
        return json.loads(marker_path(out).read_text(encoding="utf-8")).get("format") == MARKER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _bad_row(line: bytes, legacy: bool) -> str | None:
    try:
        row = json.loads(line)
    except ValueError:
        return "is not JSON"
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        return "is not a prediction row (no string 'id')"
    if legacy and any(key not in row for key in LEGACY_ROW_KEYS):
        return f"is not a pancapchain prediction row (no {' / '.join(LEGACY_ROW_KEYS)})"
    return None


def check_resumable(out: str | Path) -> str:
    """Whether ``out`` may be resumed, without changing anything: "new", "ours" or "legacy".

    Raises OutputOwnershipError (naming the file, the line and the fix) for a file that is not ours.
    """
    out = Path(out)
    if not out.is_file() or out.stat().st_size == 0:
        return "new"
    data = out.read_bytes()
    ours = _has_marker(out)
    complete = data[: data.rfind(b"\n") + 1]
    if not ours and len(complete) != len(data):
        raise OutputOwnershipError(
            f"--out {out} exists, its last line is incomplete and it has no {marker_path(out).name}, so it was "
            "not written by this version of pancapchain: nothing was changed; choose a new --out file")
    for lineno, line in enumerate(complete.splitlines(), start=1):
        problem = _bad_row(line, legacy=not ours) if line.strip() else None
        if problem:
            how = "was changed after pancapchain wrote it" if ours else "was not written by pancapchain"
            raise OutputOwnershipError(
                f"--out {out}: line {lineno} {problem}, so the file {how}: nothing was changed; choose a new "
                "--out file (or remove that line to resume)")
    return "ours" if ours else "legacy"


def claim_output(out: Path, command: str) -> None:
    """Write the marker that lets later runs resume ``out`` (atomically, before the first row)."""
    atomic_write_json(marker_path(out), {
        "format": MARKER_FORMAT,
        "file": out.name,
        "command": f"pancapchain {command}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": f"{out.name} was written by pancapchain {command}; reruns resume it only while this file exists",
    })


def finished_ids(out: Path, command: str = "infer") -> set[str]:
    """Ids already in ``out`` (ours, see :func:`check_resumable`); a partial last line (a killed run) is cut off."""
    out = Path(out)
    status = check_resumable(out)
    if status != "ours":
        claim_output(out, command)
    if status == "new":
        return set()
    data = out.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with out.open("r+b") as fh:
            fh.truncate(keep)
    return {json.loads(line)["id"] for line in data[:keep].splitlines() if line.strip()}


def append_line(out: Path, row: dict) -> None:
    """One whole line per ``write`` call on an O_APPEND descriptor, then fsync."""
    payload = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


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
) -> dict:
    """Chain every image of ``data`` into ``out`` (JSONL); returns a summary also written to ``<out>.summary.json``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = SkipReport(what="images")
    items = list_items(data, image_root, report)
    if limit > 0:
        items = items[:limit]
    done = finished_ids(out)
    todo = [it for it in items if it.id not in done]
    timings: dict[str, float] = {}
    truncated: dict[str, int] = {}
    written = 0
    with tqdm(total=len(todo), desc="chain", unit="img") as bar:
        for batch in _batches(todo, batch_size):
            states = [s for s in (_open(it, report) for it in batch) if s is not None]
            if states:
                for item, result in zip([it for it in batch if it.id in {s.id for s in states}],
                                        chain.run(states, options, timings=timings)):
                    result["image"] = item.image
                    append_line(out, result)
                    written += 1
                    for stage, stage_out in result["stages"].items():
                        truncated[stage] = truncated.get(stage, 0) + int(stage_out["truncated"])
            bar.update(len(batch))
    report.kept = len(done) + written
    summary = {
        "images_total": len(items),
        "already_done": len(done),
        "written": written,
        "skipped": report.to_dict()["skipped"],
        "seconds_per_stage": {k: round(v, 3) for k, v in timings.items()},
        "seconds_per_image": round(sum(timings.values()) / max(1, written), 4),
        "truncated_per_stage": truncated,
    }
    atomic_write_json(out.with_suffix(".summary.json"), summary)
    return summary
