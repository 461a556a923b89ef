"""Self-describing checkpoints: every folder says what it is and loads on its own.

A training checkpoint holds the adapter (LoRA + projector via ``modules_to_save``), the processor, the
recipe, ``pancap_meta.json`` and, for the ``tiny`` base only, the base weights in ``base/`` (a few MB; a real
base is referenced by its absolute path instead of copied).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, ProcessorMixin

import pancapchain
from pancapchain.config import RecipeConfig, save_recipe
from pancapchain.data.io import atomic_write_json
from pancapchain.model.box_features import META_KEY as BOX_FEATURES_KEY
from pancapchain.model.box_features import SPAN_KEY as BOX_SPAN_KEY
from pancapchain.model.box_features import attach_box_features

CHECKPOINT_FORMAT = "pancapchain-checkpoint/1"  # meta.json "format" of a training checkpoint

META_FILE = "pancap_meta.json"
MASK_STAGES_KEY = "mask_stages"  # the tasks whose answers the mask head was trained on ([] without a head)
RECIPE_FILE = "recipe.yaml"
BASE_SUBDIR = "base"


class CheckpointError(ValueError):
    """A folder that is not a usable pancapchain checkpoint; the message says what is missing."""


@dataclass
class Loaded:
    model: torch.nn.Module
    processor: ProcessorMixin
    meta: dict[str, Any]


def checkpoint_meta(cfg: RecipeConfig, prompt_version: str, system: str | None, base_ref: str) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "pancapchain_version": pancapchain.__version__,
        "base_model": base_ref,
        "prompt_version": prompt_version,
        "system_prompt": system,
        "box_format": cfg.data.box_format,
        BOX_FEATURES_KEY: cfg.data.box_features,
        BOX_SPAN_KEY: cfg.data.box_feature_span,
        "item_order": cfg.data.item_order,
        "label_answer": cfg.data.label_answer,
        "caption_mentions": cfg.data.caption_mentions,
        "chain_rows": cfg.data.chain_rows,
        "stages": {k: float(v) for k, v in cfg.data.stages.items()},
        "lora": cfg.lora.enabled,
        MASK_STAGES_KEY: list(cfg.mask.stages) if cfg.mask.enabled else [],
    }


class CheckpointWriter:
    """Writes recipe, metadata and (tiny) base next to what the Trainer saved in a checkpoint folder."""

    def __init__(self, cfg: RecipeConfig, meta: dict[str, Any], tiny_base_dir: Path | None):
        self.cfg = cfg
        self.meta = meta
        self.tiny_base_dir = tiny_base_dir

    def __call__(self, output_dir: str | Path) -> None:
        out = Path(output_dir)
        save_recipe(self.cfg, out / RECIPE_FILE)
        meta = dict(self.meta)
        if self.tiny_base_dir is not None:
            target = out / BASE_SUBDIR
            if not target.exists():
                shutil.copytree(self.tiny_base_dir, target)
            meta["base_in_checkpoint"] = BASE_SUBDIR
        atomic_write_json(out / META_FILE, meta)


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path} has no {META_FILE}: not a pancapchain checkpoint or export")
    return json.loads(meta_file.read_text())


def base_path_of(path: Path, meta: dict[str, Any]) -> Path:
    inside = meta.get("base_in_checkpoint")
    base = path / inside if inside else Path(meta["base_model"])
    if not base.is_dir():
        raise CheckpointError(f"base model of {path} not found at {base} (meta base_model={meta['base_model']!r})")
    return base


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Loaded:
    """Load a training checkpoint (base + adapter) or a merged export, with its processor, in eval mode."""
    from peft import PeftModel

    path = Path(path)
    meta = read_meta(path)
    if (path / "adapter_config.json").is_file():
        base = LlavaForConditionalGeneration.from_pretrained(
            base_path_of(path, meta), dtype=dtype, local_files_only=True, use_safetensors=True
        )
        model = PeftModel.from_pretrained(base, path, is_trainable=False)
    elif (path / "config.json").is_file():
        model = LlavaForConditionalGeneration.from_pretrained(
            path, dtype=dtype, local_files_only=True, use_safetensors=True
        )
    else:
        raise CheckpointError(f"{path} has neither adapter_config.json (checkpoint) nor config.json (export)")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model.to(device).eval()
    attach_box_features(model, processor.tokenizer, bool(meta.get(BOX_FEATURES_KEY, False)),
                        int(meta.get(BOX_SPAN_KEY, 0)))
    return Loaded(model, processor, meta)
