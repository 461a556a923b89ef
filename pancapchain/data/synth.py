"""Synthetic panoptic captioning data with exact ground truth (the embedded default dataset).

Scenes are procedural (see ``synth_scene``): stuff layers plus occluding shapes with colour, size and
pattern attributes, geometric relations (``synth_relations``), a lighting/palette global state that
changes the pixels, and an SA-Pancap-style caption (``synth_text``). Every pixel belongs to exactly one
entity; masks are COCO RLE of the visible pixels and boxes are their tight normalized boxes.

Each scene draws from its own ``numpy`` PCG64 stream seeded by ``(seed, split, index)``, so a scene does
not depend on how many others are generated, and the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pancapchain.data.io import atomic_write_json, save_samples
from pancapchain.data.schema import Entity, PanopticSample, Relation
from pancapchain.data.synth_scene import MIN_SIZE, draw_layout, render
from pancapchain.data.synth_text import compose_caption, global_state
from pancapchain.data.synth_text import vocabulary as _vocabulary

GENERATOR_VERSION = "synth-v1"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def vocabulary() -> list[str]:
    """Every word/phrase the generator can emit (captions, tags, attributes, relations, global states)."""
    return _vocabulary()


def scene_rngs(index: int, seed: int, split: str) -> tuple[np.random.Generator, ...]:
    """Three independent generators (layout, pixels, text) for one scene.

    Seeding by the tuple ``(seed, split, index)`` rather than ``seed + index`` keeps seeds from sharing
    scenes (with ``seed + index``, seed 1 would replay seed 0 shifted by one scene).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and scene index must be non-negative, got seed={seed}, index={index}")
    code = _SPLIT_CODES.get(split, zlib.crc32(split.encode("utf-8")))
    children = np.random.SeedSequence([seed, code, index]).spawn(3)
    return tuple(np.random.Generator(np.random.PCG64(child)) for child in children)


def sample_id(split: str, index: int) -> str:
    return f"syn-{split}-{index:06d}"


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``(height, width)`` bool mask -> COCO RLE ``{"size": [h, w], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_scene(
    index: int, seed: int, size: int, split: str = "train"
) -> tuple[PanopticSample, Image.Image]:
    """One scene in memory: the sample (image path ``images/<id>.png``) and its RGB image of width ``size``."""
    layout_rng, pixel_rng, text_rng = scene_rngs(index, seed, split)
    layout = draw_layout(layout_rng, size)
    pixels = render(layout, pixel_rng)
    ordered, caption, triples = compose_caption(layout, text_rng)
    entities = tuple(
        Entity(i, ent.tag, ent.box, encode_mask(ent.visible), ent.attributes, ent.is_thing)  # type: ignore[arg-type]
        for i, ent in enumerate(ordered)
    )
    sid = sample_id(split, index)
    sample = PanopticSample(
        id=sid,
        image=f"images/{sid}.png",
        width=layout.width,
        height=layout.height,
        entities=entities,
        caption=caption,
        relations=tuple(Relation(*t) for t in triples),
        global_state=global_state(layout),
    )
    return sample, Image.fromarray(pixels)


def _atomic_write_png(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_args(n_train: int, n_val: int, seed: int, size: int) -> None:
    if n_train < 0 or n_val < 0:
        raise ValueError(f"scene counts must be >= 0, got n_train={n_train}, n_val={n_val}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px, got {size}")


def _split_stats(samples: list[PanopticSample]) -> dict[str, Any]:
    if not samples:
        return {"scenes": 0}
    things = [sum(e.is_thing for e in s.entities) for s in samples]
    stuff = [sum(not e.is_thing for e in s.entities) for s in samples]
    return {
        "scenes": len(samples),
        "mean_things": round(statistics.fmean(things), 3),
        "mean_stuff": round(statistics.fmean(stuff), 3),
        "mean_relations": round(statistics.fmean(len(s.relations) for s in samples), 3),
        "mean_caption_words": round(statistics.fmean(len(s.caption.split()) for s in samples), 1),
    }


def write_dataset(
    out_dir: str | Path, n_train: int, n_val: int, seed: int, size: int, progress: bool = True
) -> dict[str, Any]:
    """Write ``images/<id>.png``, ``train.jsonl``, ``val.jsonl`` and ``synth_config.json`` under ``out_dir``.

    Returns the paths written and per-split statistics (the same dict is stored in synth_config.json).
    """
    _check_args(n_train, n_val, seed, size)
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stats: dict[str, Any] = {}
    bar = tqdm(total=n_train + n_val, desc="synth scenes", unit="scene", disable=not progress)
    for split, count in (("train", n_train), ("val", n_val)):
        samples = []
        for index in range(count):
            sample, image = generate_scene(index, seed, size, split)
            _atomic_write_png(out / sample.image, image)
            samples.append(sample)
            bar.update(1)
        save_samples(out / f"{split}.jsonl", samples)
        stats[split] = _split_stats(samples)
    bar.close()
    result = {
        "generator": GENERATOR_VERSION,
        "args": {"out": str(out), "n_train": n_train, "n_val": n_val, "seed": seed, "size": size},
        "paths": {
            "train": str(out / "train.jsonl"),
            "val": str(out / "val.jsonl"),
            "images": str(images),
            "config": str(out / "synth_config.json"),
        },
        "stats": stats,
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(out / "synth_config.json", result)
    return result
