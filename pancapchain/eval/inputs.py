"""Read evaluation inputs: GT (SA-Pancap caption JSON or our PanopticSample JSONL) and predictions.

GT formats
* SA-Pancap caption JSON ``[{"image_path", "gt_response"}, ...]``: id = image path without extension,
  "/" -> "_" (the importer's rule, :func:`pancapchain.data.sapancap.sample_id`). These files carry no
  image sizes: sizes are read from ``image_root`` when given, otherwise the image is *assumed square*, which
  only matters for predicted ``<box>[[ints]]</box>`` groups (padded-square grid -> normalized).
* PanopticSample JSONL (:mod:`pancapchain.data.schema`), with sizes, structure and masks.

Predictions: JSONL rows read by :meth:`pancapchain.data.prediction.Prediction.from_dict` (the record ``infer``
writes; other tools' ``{"id", "caption", "masks"?}`` rows too, ``masks``: list of ``{"box" | "entity", "rle"}``),
or a JSON array of such objects (``image_path`` / ``model_response`` are accepted as in the official files).
Records without a usable id (or on a line over ``MAX_LINE_CHARS``) are skipped into the SkipReport; later
duplicates of an id are skipped too; a caption over ``MAX_CAPTION_CHARS`` is not scored (zero, with a warning);
a record whose caption is not a string is kept as *bad* (its image is scored zero with a warning).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pancapchain.data import io
from pancapchain.data.io import SkipReport, iter_jsonl, load_samples, read_line_bounded
from pancapchain.data.prediction import Prediction, PredictionError
from pancapchain.data.sapancap import ImportReport, read_caption_records, sample_id
from pancapchain.data.schema import PanopticSample, SampleError

# Real panoptic captions have a few thousand characters; scoring time grows with length (a 5 MB caption
# took minutes), so a longer caption is not scored: the prediction scores zero, a GT image is skipped.
MAX_CAPTION_CHARS = 50_000


def caption_too_long(caption: str) -> str | None:
    """Why ``caption`` is not scored (None when its length is fine)."""
    if len(caption) <= MAX_CAPTION_CHARS:
        return None
    return f"caption of {len(caption)} characters, more than the {MAX_CAPTION_CHARS} scored (a runaway generation?)"


@dataclass(frozen=True)
class GTRecord:
    """One GT image: its caption, size (None when unknown) and the full sample when read from JSONL."""

    id: str
    caption: str
    width: int | None = None
    height: int | None = None
    sample: PanopticSample | None = None
    image: str | None = None


def _first_char(path: Path) -> str:
    with path.open(encoding="utf-8") as fh:
        while True:
            chunk = fh.read(256)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def _image_size(image_root: Path | None, relative: str) -> tuple[int | None, int | None]:
    if image_root is None:
        return None, None
    from PIL import Image

    try:
        with Image.open(image_root / relative) as img:
            return img.size
    except (OSError, ValueError):
        return None, None


def load_gt(path: str | Path, image_root: str | Path | None = None) -> tuple[list[GTRecord], SkipReport]:
    """GT records in file order; invalid records and duplicate ids are skipped into the report."""
    path = Path(path)
    if _first_char(path) == "[":
        return _load_sapancap(path, Path(image_root) if image_root else None)
    samples, report = load_samples(path)
    report.what = f"GT samples in {path.name}"
    records = [GTRecord(s.id, s.caption, s.width, s.height, s, s.image) for s in samples]
    return _without_long_captions(records, report), report


def _without_long_captions(records: list[GTRecord], report: SkipReport) -> list[GTRecord]:
    kept = []
    for record in records:
        problem = caption_too_long(record.caption)
        if problem:
            report.skip(record.id, f"invalid: {problem}")
        else:
            kept.append(record)
    report.kept = len(kept)
    return kept


def _load_sapancap(path: Path, image_root: Path | None) -> tuple[list[GTRecord], SkipReport]:
    report = SkipReport(what=f"GT captions in {path.name}")
    imported = ImportReport()
    records: list[GTRecord] = []
    seen: set[str] = set()
    for name, image_path, caption in read_caption_records(path, imported):
        image_id = sample_id(image_path)
        if image_id in seen:
            report.skip(name, f"duplicate: GT id {image_id} already seen")
            continue
        seen.add(image_id)
        width, height = _image_size(image_root, image_path)
        records.append(GTRecord(image_id, caption, width, height, None, image_path))
    for name, problem in imported.invalid_records:
        report.skip(name, f"invalid: {problem}")
    return _without_long_captions(records, report), report


def load_predictions(path: str | Path) -> tuple[dict[str, Prediction], SkipReport]:
    """Predictions by id (first occurrence wins); unusable records are counted in the report."""
    path = Path(path)
    report = SkipReport(what=f"predictions in {path.name}")
    found: dict[str, Prediction] = {}
    for where, obj in _iter_prediction_objects(path, report):
        try:
            pred = Prediction.from_dict(obj, where)
        except PredictionError as err:
            report.skip(where, err.problem)
            continue
        if pred.problem is None and caption_too_long(pred.caption):
            pred.problem = f"bad prediction: {caption_too_long(pred.caption)}"
        if pred.id in found:
            report.skip(where, f"duplicate: prediction id {pred.id} already seen (first one kept)")
            continue
        found[pred.id] = pred
    report.kept = len(found)
    return found, report


def _pretty_printed_object(path: Path) -> bool:
    """True when the file is one JSON object spread over several lines (not JSONL, not an array)."""
    with path.open(encoding="utf-8") as fh:
        first, length = read_line_bounded(fh, io.MAX_LINE_CHARS)
        while length and not first.strip():
            first, length = read_line_bounded(fh, io.MAX_LINE_CHARS)
    if not first.strip():  # empty file, or a first line too long to read: iter_jsonl reports it
        return False
    try:
        json.loads(first)
        return False
    except json.JSONDecodeError:
        pass
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except json.JSONDecodeError:
        return False


def _iter_prediction_objects(path: Path, report: SkipReport):
    first = _first_char(path)
    if first == "{" and _pretty_printed_object(path):
        raise SampleError(str(path), "one JSON object spread over several lines, not predictions: give JSONL "
                          "(one {\"id\", \"caption\"} object per line) or a JSON array of such objects")
    if first != "[":
        yield from iter_jsonl(path, report)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SampleError(str(path), f"malformed JSON array: {err.msg} at line {err.lineno}") from None
    for index, obj in enumerate(data):
        yield f"{path.name}[{index}]", obj
