"""Import SA-Pancap caption files into :class:`~pancapchain.data.schema.PanopticSample` records.

Input: a JSON array ``[{"image_path": "sam/sa_000045/sa_507752.jpg", "gt_response": "<caption>"}, ...]``
whose captions ground entities with inline normalized boxes ``[[x1, y1, x2, y2]]`` (SA-Pancap
``sapancap_{val,test}_gtcaption.json``). Each record becomes one sample:

* ``id``: the image path without its extension, "/" replaced by "_" (``sam_sa_000045_sa_507752``);
* ``image``: ``image_path`` as given (relative to the image root); ``width``/``height`` read from the image
  header (no full decode);
* ``entities``: :func:`~pancapchain.data.caption_parser.caption_entities` of the caption, ids 0..n-1 in
  caption order, ``is_thing`` True (captions do not say thing/stuff);
* ``caption``: the original caption text, inline boxes kept.

Bad records never stop a run: missing or unreadable images, image paths escaping the root, malformed
records and duplicate ids are skipped and listed in the :class:`ImportReport` (``strict=True`` raises
:class:`~pancapchain.data.schema.SampleError` naming the record instead). Parse statistics (boxes found and
recovered, tags, unparsed fragments) cover every caption read, and :func:`caption_statistics` computes them
without any image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pancapchain.data.caption_parser import ParsedCaption, caption_entities, parse_caption
from pancapchain.data.schema import Entity, PanopticSample, SampleError, resolve_image, validate_box


@dataclass
class ImportReport:
    """Counts and skips of one import; ``*_pct`` are percentages (None when the denominator is 0)."""

    source: str = ""
    captions: int = 0
    box_groups: int = 0
    boxes: int = 0
    boxes_recovered: int = 0
    entities: int = 0
    tagged_entities: int = 0
    samples: int = 0
    unparsed: list[tuple[str, str]] = field(default_factory=list)  # (record, fragment)
    invalid_records: list[tuple[str, str]] = field(default_factory=list)  # (record, problem)
    missing_images: list[tuple[str, str]] = field(default_factory=list)  # (record, problem)
    escaping_images: list[tuple[str, str]] = field(default_factory=list)  # (record, problem)

    @property
    def recovered_pct(self) -> float | None:
        return 100.0 * self.boxes_recovered / self.boxes if self.boxes else None

    @property
    def tagged_pct(self) -> float | None:
        return 100.0 * self.tagged_entities / self.entities if self.entities else None

    def add_parse(self, record: str, parsed: ParsedCaption, entities: list[tuple[str, Any]]) -> None:
        """Count one parsed caption and the entities made from it."""
        self.captions += 1
        self.box_groups += parsed.n_box_groups
        self.boxes += parsed.n_boxes
        entity_boxes = {tuple(box) for _, box in entities}
        self.boxes_recovered += sum(
            1 for m in parsed.mentions for box in m.boxes if tuple(round(v, 6) for v in box) in entity_boxes
        )
        self.entities += len(entities)
        self.tagged_entities += sum(1 for tag, _ in entities if tag)
        self.unparsed.extend((record, fragment) for fragment in parsed.unparsed)

    def to_dict(self) -> dict[str, Any]:
        def listed(pairs: list[tuple[str, str]], key: str) -> list[dict[str, str]]:
            return [{"record": r, key: v} for r, v in pairs]

        return {
            "source": self.source,
            "captions": self.captions,
            "samples": self.samples,
            "box_groups": self.box_groups,
            "boxes": self.boxes,
            "boxes_recovered": self.boxes_recovered,
            "boxes_recovered_pct": self.recovered_pct,
            "entities": self.entities,
            "tagged_entities": self.tagged_entities,
            "tagged_entities_pct": self.tagged_pct,
            "unparsed": listed(self.unparsed, "fragment"),
            "invalid_records": listed(self.invalid_records, "problem"),
            "missing_images": listed(self.missing_images, "problem"),
            "escaping_images": listed(self.escaping_images, "problem"),
        }

    def summary(self, limit: int = 10) -> str:
        """Human-readable report (what the CLI prints)."""

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}%"

        lines = [
            f"SA-Pancap import of {self.source}:",
            f"  captions read:          {self.captions}",
            f"  samples written:        {self.samples}",
            f"  box groups found:       {self.box_groups}",
            f"  boxes found:            {self.boxes}",
            f"  boxes recovered:        {self.boxes_recovered} ({pct(self.recovered_pct)})",
            f"  entities:               {self.entities}",
            f"  entities with a tag:    {self.tagged_entities} ({pct(self.tagged_pct)})",
        ]
        for title, pairs in (
            ("fragments that could not be parsed", self.unparsed),
            ("invalid records (skipped)", self.invalid_records),
            ("images missing or unreadable (skipped)", self.missing_images),
            ("image paths escaping the image root (skipped)", self.escaping_images),
        ):
            lines.append(f"  {title}: {len(pairs)}")
            lines += [f"    - {record}: {what}" for record, what in pairs[:limit]]
            if len(pairs) > limit:
                lines.append(f"    ... and {len(pairs) - limit} more (see import_report.json)")
        return "\n".join(lines)


def sample_id(image_path: str) -> str:
    """``sam/sa_000045/sa_507752.jpg`` -> ``sam_sa_000045_sa_507752`` (extension dropped, "/" -> "_")."""
    path = Path(image_path)
    return str(path.with_suffix("")).replace("\\", "/").replace("/", "_")


def read_caption_records(path: str | Path, report: ImportReport) -> list[tuple[str, str, str]]:
    """``(record_name, image_path, caption)`` per valid entry; malformed entries go to the report.

    Raises SampleError when the file itself is not a JSON array (nothing can be imported from it).
    """
    path = Path(path)
    report.source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SampleError(str(path), f"cannot read the caption file: {err}") from None
    if not isinstance(data, list):
        raise SampleError(str(path), f"expected a JSON array of records, got {type(data).__name__}")
    records = []
    for index, entry in enumerate(data):
        name = f"{path.name}[{index}]"
        if not isinstance(entry, dict):
            report.invalid_records.append((name, f"expected an object, got {type(entry).__name__}"))
            continue
        image, caption = entry.get("image_path"), entry.get("gt_response")
        if not isinstance(image, str) or not image.strip():
            report.invalid_records.append((name, "missing or non-string 'image_path'"))
            continue
        name = f"{name} ({image})"
        if not isinstance(caption, str):
            report.invalid_records.append((name, "missing or non-string 'gt_response'"))
            continue
        records.append((name, image, caption))
    return records


def _entities(found: list[tuple[str, Any]], record: str) -> tuple[Entity, ...]:
    return tuple(
        Entity(i, tag, validate_box(box, record, f"entity {i} box")) for i, (tag, box) in enumerate(found)
    )


def caption_statistics(captions_path: str | Path) -> ImportReport:
    """Parse statistics of a caption file (boxes found/recovered, tags, unparsed); no images needed."""
    report = ImportReport()
    for name, _, caption in tqdm(read_caption_records(captions_path, report), desc="parse", disable=None):
        parsed = parse_caption(caption)
        report.add_parse(name, parsed, caption_entities(parsed))
    return report


def _image_size(
    image_root: Path, image: str, record: str, report: ImportReport, strict: bool
) -> tuple[int, int] | None:
    """(width, height) from the image header, or None after recording why (strict: raise instead)."""
    try:
        path = resolve_image(image_root, image, record)
    except SampleError as err:
        if strict:
            raise
        report.escaping_images.append((record, err.problem))
        return None
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        problem = "image file not found" if isinstance(err, FileNotFoundError) else f"unreadable image: {err}"
        if strict:
            raise SampleError(record, f"{problem} ({path})") from None
        report.missing_images.append((record, f"{problem} ({path})"))
        return None


def import_sapancap(
    captions_path: str | Path, image_root: str | Path, strict: bool = False
) -> tuple[list[PanopticSample], ImportReport]:
    """Read SA-Pancap captions and their images' sizes into samples (see the module docstring)."""
    report = ImportReport()
    records = read_caption_records(captions_path, report)
    if strict and report.invalid_records:
        raise SampleError(*report.invalid_records[0])
    samples: list[PanopticSample] = []
    seen: set[str] = set()
    for name, image, caption in tqdm(records, desc="import sapancap", disable=None):
        parsed = parse_caption(caption)
        found = caption_entities(parsed)
        report.add_parse(name, parsed, found)
        sid = sample_id(image)
        if sid in seen:
            if strict:
                raise SampleError(name, f"duplicate sample id {sid}")
            report.invalid_records.append((name, f"duplicate sample id {sid}"))
            continue
        size = _image_size(Path(image_root), image, name, report, strict)
        if size is None:
            continue
        try:
            entities = _entities(found, name)
        except SampleError as err:  # the parser only yields valid boxes; kept as a guard, never a crash
            if strict:
                raise
            report.invalid_records.append((name, err.problem))
            continue
        seen.add(sid)
        samples.append(PanopticSample(sid, image, size[0], size[1], entities, caption))
    report.samples = len(samples)
    return samples, report
