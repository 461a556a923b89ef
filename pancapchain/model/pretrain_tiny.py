"""``pretrain-tiny``: build the tiny LLaVA of a recipe, pretrain its vision tower, save it as a llava-hf folder.

The folder is a base like any local LLaVA checkpoint (``model.base: <folder>`` in a recipe): config +
safetensors weights + processor (the tokenizer, with the bins format's ``<loc_i>`` tokens when the recipe uses
them). The vision tower is pretrained (:mod:`pancapchain.model.vision_pretrain`); with ``lm_seconds > 0`` the
language model is then pretrained on the caption rows without their images
(:mod:`pancapchain.model.language_pretrain`); the projector keeps its seeded random init, as a LLaVA base keeps
a projector to be trained.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pancapchain.config import RecipeConfig
from pancapchain.constants import DIRECT, LOC_BINS, STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.io import SkipReport, atomic_write_json, load_samples
from pancapchain.data.prompts import recipe_prompts
from pancapchain.data.schema import PanopticSample
from pancapchain.data.stages import StageExample
from pancapchain.errors import UserError

log = logging.getLogger(__name__)
PRETRAIN_FILE = "pretrain_tiny.json"
BOX_HEADS = ("bins", "l1")
THING_WEIGHT = 4.0  # the shapes own few patches but are what the chain gets wrong (docs/learning_quality.md)
# naming each whole shape from its pooled patches (the label stage's question): off by default, as it traded
# the tower's boxes for its names and did not lift the chain beyond one training's spread (same doc)
ENTITY_WEIGHT = 0.0
# text-only caption rows for the language model: off by default, as the copying it taught did not lift the chain
# end to end within the same minutes (docs/learning_quality.md, "What the caption stage copies")
LM_SECONDS = 0.0
# what the whole-shape loss pools: "mask" (exact shares) or "box" (the box's patches, as box features read them)
ENTITY_POOL = "mask"
MIRROR = False  # mirror half of each batch left-right (the synthetic shapes are symmetric)


def tokenizer_texts(cfg: RecipeConfig, loaded: tuple[list[PanopticSample], SkipReport] | None = None
                    ) -> tuple[list[str], set[str], list[StageExample]]:
    """The texts the tiny tokenizer is trained on (every chain stage + direct, so one base serves every
    variant's recipe), the ids of the samples that passed validation, and their caption-stage examples.
    ``loaded``: ``load_samples(cfg.data.train)`` when the caller has read it already."""
    from pancapchain.train.dataset import collect_stage_examples

    prompts = recipe_prompts(cfg.data.prompt_version, cfg.data.system_prompt)
    tasks = [*STAGES, DIRECT]
    triples, _report = collect_stage_examples(
        cfg.data.train, cfg.data.image_root or None, prompts, BoxCodec(cfg.data.box_format), stages=tasks,
        discover_ratio=tuple(cfg.data.discover_ratio), seed=cfg.train.seed, strict=cfg.data.strict,
        item_order=cfg.data.item_order, label_answer=cfg.data.label_answer,
        caption_mentions=cfg.data.caption_mentions, loaded=loaded,
    )
    texts = [prompts.system] + [ex.prompt + " " + ex.target for ex, *_ in triples]
    captions = [ex for ex, *_ in triples if ex.stage == "caption"]
    return texts, {ex.sample_id for ex, *_ in triples}, captions


def pretrain_tiny(
    cfg: RecipeConfig, out: Path, seconds: float, *, lr: float = 3e-3, batch_size: int = 64, box_head: str = "l1",
    thing_weight: float = THING_WEIGHT, entity_weight: float = ENTITY_WEIGHT, lm_seconds: float = LM_SECONDS,
    entity_pool: str = ENTITY_POOL, mirror: bool = MIRROR,
) -> dict:
    """Build the recipe's tiny base, pretrain its tower for ``seconds`` on ``data.train``, save it to ``out``.

    ``box_head``: "l1" regresses each owner-box coordinate, "bins" classifies it into the LOC_BINS + 1 positions
    of the location tokens (:class:`pancapchain.model.vision_pretrain.DenseHead`; a better tower probe, but
    lower PancapScores in the full benchmark: docs/learning_quality.md). ``thing_weight``: weight of the
    patches a shape owns in the tag and box losses (the other patches weigh 1). ``entity_weight``: weight of the
    loss that names each shape from its mean patch feature (0 = off), weighted by its mask or its box
    (``entity_pool``). ``mirror``: mirror half of each batch left-right. ``lm_seconds``: then train the language
    model for that long on the caption rows without images (0 = off).

    Returns (and writes to ``out/pretrain_tiny.json``) the run's figures: dense metrics, steps and seconds.
    """
    from pancapchain.model.build import load_base
    from pancapchain.model.vision_pretrain import (
        ENTITY_POOLS,
        build_targets,
        load_pixels,
        pretrain_vision,
        tag_vocabulary,
    )

    if entity_pool not in ENTITY_POOLS:
        raise UserError(f"pretrain-tiny: entity pool must be one of {ENTITY_POOLS}, not {entity_pool!r}")
    if box_head not in BOX_HEADS:
        raise UserError(f"pretrain-tiny: box head must be one of {BOX_HEADS}, not {box_head!r}")
    if cfg.model.base != "tiny":
        raise UserError(f"pretrain-tiny builds the tiny base: the recipe's model.base is {cfg.model.base!r}, "
                        "not 'tiny'")
    started = time.monotonic()
    loaded = load_samples(cfg.data.train, strict=cfg.data.strict)  # read once, for the tokenizer and the tower
    texts, kept, captions = tokenizer_texts(cfg, loaded)
    samples = [s for s in loaded[0] if s.id in kept]
    if not samples:
        raise UserError(f"pretrain-tiny: no usable sample in {cfg.data.train}")
    model, processor = load_base(cfg, texts)
    grid = cfg.model.tiny.image_size // cfg.model.tiny.patch_size
    vocab = tag_vocabulary(samples)
    root = Path(cfg.data.image_root) if cfg.data.image_root else Path(cfg.data.train).parent
    pixels = load_pixels(samples, root, processor.image_processor)
    targets = build_targets(samples, grid, vocab, entity_pool)
    prepared = time.monotonic() - started
    stats = pretrain_vision(model, pixels, targets, seconds=seconds, lr=lr, batch_size=batch_size,
                            seed=cfg.model.tiny.seed, box_bins=LOC_BINS + 1 if box_head == "bins" else 0,
                            thing_weight=thing_weight, entity_weight=entity_weight, mirror=mirror)
    if lm_seconds > 0:
        stats.update(pretrain_caption_text(model, processor, cfg, captions, lm_seconds))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = {
        "task": f"dense patch tags + owner boxes, {box_head} head (pancapchain.model.vision_pretrain)",
        "data": str(cfg.data.train), "images": len(samples), "classes": len(vocab),
        "box_format": cfg.data.box_format, "box_head": box_head, "thing_weight": thing_weight,
        "entity_weight": entity_weight, "entity_pool": entity_pool, "mirror": mirror,
        "lm_pretrain_seconds": lm_seconds,
        "tiny": json.loads(json.dumps(cfg.model.tiny.__dict__)),
        "prepare_seconds": round(prepared, 1), **stats,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_json(out / PRETRAIN_FILE, report)
    return report


def pretrain_caption_text(model, processor, cfg: RecipeConfig, captions: list[StageExample], seconds: float) -> dict:
    """Train the language model on the caption-stage examples without their images (the chat turn as training
    renders it, image dropped) for ``seconds``; the run's figures."""
    from pancapchain.model.chat import text_token_ids
    from pancapchain.model.language_pretrain import pretrain_language

    if not captions:
        raise UserError(f"pretrain-tiny: --lm-seconds needs captions, and no sample of {cfg.data.train} has one")
    system = recipe_prompts(cfg.data.prompt_version, cfg.data.system_prompt).system
    rows = text_token_ids(processor, [ex.prompt for ex in captions], [ex.target for ex in captions], system)
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return pretrain_language(model, rows, pad, seconds=seconds, seed=cfg.model.tiny.seed)
