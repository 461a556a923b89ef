"""Attach a mask head to a (peft-wrapped) llava-hf model, and save/restore it with training checkpoints.

The head is a submodule of the base ``LlavaForConditionalGeneration`` (``model.mask_head``), so the Trainer,
DDP and DeepSpeed see its parameters like any other; peft does not save it (it is not an adapter), so
checkpoints carry it beside the adapter as ``mask_head.safetensors`` + ``mask_head.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pancapchain.config import MaskSection
from pancapchain.mask.head import MASK_HEAD_WEIGHTS, MaskHead, MaskHeadConfig, load_mask_head, save_mask_head
from pancapchain.mask.head import sam_head_config as _sam_head_config


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def build_mask_head(model: torch.nn.Module, mask: MaskSection) -> MaskHead:
    """A head sized for ``model``: queries from the LLM width, pixels from the projected patch features."""
    config = _base(model).config
    hidden = config.text_config.hidden_size
    if mask.backend == "sam":
        cfg = _sam_head_config(mask.sam_path, hidden)
        cfg.word_proj = mask.mecl_weight > 0
    else:
        grid = config.vision_config.image_size // config.vision_config.patch_size
        cfg = MaskHeadConfig(hidden_size=hidden, vision_size=hidden, grid=grid, dim=mask.dim,
                             upsample=mask.upsample, word_proj=mask.mecl_weight > 0, box_prior=mask.box_prior,
                             pixel_skip=mask.pixel_skip)
    return MaskHead(cfg)


def attach_mask_head(model: torch.nn.Module, mask: MaskSection) -> MaskHead:
    head = build_mask_head(model, mask)
    base = _base(model)
    base.mask_head = head
    # The head is saved on its own (mask_head.safetensors, save_head_from); kept out of save_pretrained, a fully
    # fine-tuned checkpoint stays the plain llava-hf layout that transformers loads without unexpected keys.
    base._keys_to_ignore_on_save = set(base._keys_to_ignore_on_save or ()) | {
        f"mask_head.{key}" for key in head.state_dict()}
    return head


def mask_head_of(model: torch.nn.Module) -> MaskHead | None:
    return next((m for m in model.modules() if isinstance(m, MaskHead)), None)


def save_head_from(model: torch.nn.Module, output_dir: str | Path, state_dict: dict | None = None) -> None:
    """Save the attached head; under ZeRO-3 the gathered ``state_dict`` of the whole model is the source."""
    head = mask_head_of(model)
    if head is None:
        return
    if state_dict is not None:
        prefix = next((k.split("mask_head.")[0] + "mask_head." for k in state_dict if "mask_head." in k), None)
        if prefix is not None:
            copy = MaskHead(head.cfg)
            own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            copy.load_state_dict(own, strict=False)
            head = copy
    save_mask_head(head, output_dir)


def restore_head_into(model: torch.nn.Module, checkpoint_dir: str | Path) -> bool:
    """Load a checkpoint's saved head weights into the attached head (Trainer resume); True if loaded."""
    head = mask_head_of(model)
    if head is None or not (Path(checkpoint_dir) / MASK_HEAD_WEIGHTS).is_file():
        return False
    saved = load_mask_head(checkpoint_dir, sam_path=head.cfg.sam_path or None)
    head.load_state_dict(saved.state_dict())
    return True
