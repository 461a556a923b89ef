"""What the web demo shows, as plain data (no gradio here): tables, pictures, the highlighted caption, inputs.

The editable table of a stage has one row per item: ``[tag, boxes]`` where boxes is ``"x1, y1, x2, y2"``
(normalized to [0, 1]); an item with several boxes lists them separated by ``;``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from pancapchain.data.caption_parser import parse_caption
from pancapchain.data.prediction import PredictedEntity, Prediction
from pancapchain.data.stage_parse import StageItem
from pancapchain.data.synth import generate_scene
from pancapchain.infer.session import ChainSession, SessionError
from pancapchain.infer.visualize import PALETTE, draw_prediction

COLUMNS = ["tag", "box (x1, y1, x2, y2 in [0, 1]; several: separate with ;)"]
DEFAULT_MAX_PIXELS = 4096 * 4096
EXAMPLE_SEED, EXAMPLE_SIZE = 0, 64
EXAMPLES = tuple(f"synthetic scene {i}" for i in range(4))


# ------------------------------------------------------------------------------------------ tables
def items_to_rows(items: Sequence[StageItem]) -> list[list[str]]:
    """A stage's items as table rows ``[tag, "x1, y1, x2, y2; ..."]`` (empty tag for stage-1 items)."""
    return [[it.tag or "", "; ".join(", ".join(f"{v:.3f}" for v in box) for box in it.boxes)] for it in items]


def entity_rows(result: dict) -> list[list[str]]:
    """The entities of a chain result (``PancapChain.result``) as table rows ``[tag, "x1, y1, x2, y2"]``."""
    return [[e.get("tag") or "", ", ".join(f"{v:.3f}" for v in e["box"])] for e in result.get("entities", [])]


def rows_to_items(rows: Sequence[Sequence], stage: str) -> list[StageItem]:
    """Table rows back to items; a fully empty row is ignored, anything else wrong names its row (1-based).

    Stage-1 (localize) items are boxes only, so their tag cell is ignored; later stages need a tag.
    """
    items = []
    for number, row in enumerate(rows, start=1):
        cells = [("" if cell is None else str(cell)).strip() for cell in list(row)[:2]]
        tag, boxes = (cells + ["", ""])[:2]
        if not tag and not boxes:
            continue
        if not boxes:
            raise SessionError(f"row {number}: no box (write x1, y1, x2, y2 with values in [0, 1])")
        if stage != "localize" and not tag:
            raise SessionError(f"row {number}: stage {stage} items need a tag")
        try:
            parsed = tuple(ChainSession.parse_box(part, f"row {number}") for part in boxes.split(";") if part.strip())
        except SessionError as err:
            raise SessionError(f"row {number}: {err}") from None
        items.append(StageItem(tag if stage != "localize" else None, parsed))
    return items


# ---------------------------------------------------------------------------------------- pictures
def stage_prediction(session: ChainSession, stage: str) -> Prediction:
    """What the chain knows after ``stage``, as ``draw_prediction`` draws it (entities, masks, caption).

    localize: the boxes; label: the labelled items; discover: labelled + discovered; caption: the caption's
    entities, with their masks when the model has a mask head.
    """
    state = session.state
    if stage == "caption":
        return session.chain.prediction(state)
    items = state.entities() if stage == "discover" else session.items(stage)
    entities = [PredictedEntity(it.tag or "", tuple(round(v, 4) for v in box)) for it in items for box in it.boxes]
    return Prediction(state.id, entities=entities)


def overlay(session: ChainSession, stage: str | None, caption: bool = False) -> Image.Image | None:
    """The image with the boxes, tags and masks known after ``stage`` (the bare image before stage 1).

    ``caption``: the caption text below the picture (the downloaded PNG; the page shows it beside it).
    """
    if session.state is None:
        return None
    pred = stage_prediction(session, stage) if stage is not None else Prediction(session.state.id)
    return draw_prediction(session.state.image, replace(pred, caption=pred.caption if caption else ""))


def color_hex(index: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*PALETTE[index % len(PALETTE)])


def highlighted_caption(result: dict) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """The caption as (text, label) segments: each grounded phrase labelled ``"k: tag"``, box text left out.

    ``k`` is the entity's index in ``result["entities"]``, so the phrase's colour (``color_map``) is the
    colour of its box in the overlay. Returns (segments, color_map).
    """
    caption = result.get("caption") or ""
    width, height = result.get("width", 1000), result.get("height", 1000)
    index = {tuple(e["box"]): k for k, e in enumerate(result.get("entities", []))}
    segments: list[tuple[str, str | None]] = []
    colors: dict[str, str] = {}
    cursor = 0
    for mention in parse_caption(caption, width, height).mentions:
        before = caption[cursor : mention.start]
        k = index.get(tuple(round(v, 4) for v in mention.boxes[0]))
        start = before.lower().rfind(mention.tag.lower()) if mention.tag and k is not None else -1
        if start < 0:
            segments.append((before, None))
        else:
            label = f"{k}: {mention.tag}"
            colors[label] = color_hex(k)
            segments += [(before[:start], None), (before[start:].rstrip(), label)]
        cursor = mention.end
    segments.append((caption[cursor:], None))
    return [(text, label) for text, label in segments if text], colors


# ------------------------------------------------------------------------------------------ inputs
def open_upload(path: str | Path | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded file as an RGB image; not an image, or more than ``max_pixels``, is a SessionError."""
    if not path:
        raise SessionError("no file: upload an image (PNG, JPEG, ...) or pick an example")
    name = Path(path).name
    try:
        with Image.open(path) as img:
            width, height = img.size
            image = img.convert("RGB") if width * height <= max_pixels else None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SessionError(f"{name} is not a readable image ({type(err).__name__}: {err})") from None
    if image is None:
        raise SessionError(f"{name} is {width}x{height} = {width * height:,} pixels; the limit is "
                           f"{max_pixels:,} (serve --max-pixels): downscale it first")
    return image


def example_image(name: str) -> tuple[Image.Image, str]:
    """A bundled example: a synthetic validation scene, generated on the fly (no files shipped)."""
    if name not in EXAMPLES:
        raise SessionError(f"unknown example {name!r}: choose one of {', '.join(EXAMPLES)}")
    sample, image = generate_scene(EXAMPLES.index(name), EXAMPLE_SEED, EXAMPLE_SIZE, "val")
    return image, sample.id
