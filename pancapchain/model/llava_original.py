"""Read an original-format LLaVA checkpoint (``LlavaLlamaForCausalLM``: llava-v1.5, ASMv2) and rename its tensors.

Original layout (as in the LLaVA repository)::

    model.embed_tokens.weight, model.layers.N.*, model.norm.weight, lm_head.weight   the Llama language model
    model.mm_projector.0.{weight,bias}, model.mm_projector.2.{weight,bias}          mlp2x_gelu projector
    model.vision_tower.vision_tower.vision_model.*                                  CLIP tower (often absent)

Names produced here are the in-memory names of ``LlavaForConditionalGeneration`` for the pinned transformers;
``save_pretrained`` then writes the llava-hf file layout. The CLIP tower is frequently not stored in the
checkpoint (it is referenced by hub id, ``mm_vision_tower``); it then comes from a local CLIP folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ORIGINAL_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
HF_TOWER_PREFIX = "model.vision_tower."
HF_LANGUAGE_PREFIX = "model.language_model."
_PROJECTOR_RENAMES = {
    "model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
    "model.mm_projector.2.": "model.multi_modal_projector.linear_2.",
}
_LANGUAGE_PARTS = ("model.embed_tokens.", "model.layers.", "model.norm.")
_TOWER_PARTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
# A full CLIPModel folder also holds the text encoder; those tensors are not part of the tower.
_CLIP_NON_VISION = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")

# Published vision configs of the CLIP towers LLaVA checkpoints reference by hub id (used only for the
# config when the tower weights are inside the checkpoint; weights are never downloaded).
KNOWN_CLIP_TOWERS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
    "openai/clip-vit-large-patch14": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}


class ConvertError(ValueError):
    """An original checkpoint that cannot be converted; the message names the folder and the problem."""


def weight_files(folder: Path) -> list[Path]:
    """The weight files of ``folder``: the shards listed by an index, or the single weights file."""
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text()).get("weight_map", {})
            shards = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise ConvertError(f"{folder}/{index} lists shards that do not exist: {missing[:5]}")
            return shards
    return [folder / name for name in WEIGHT_FILES if (folder / name).is_file()][:1]


def read_tensors(folder: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """All tensors of ``folder`` (safetensors or .bin, sharded or not), floating ones cast to ``dtype``."""
    files = weight_files(folder)
    if not files:
        raise ConvertError(f"{folder} holds no weights ({', '.join(WEIGHT_FILES)} or a sharded index)")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            shard = load_file(str(path))
        else:
            shard = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in shard.items():
            tensors[key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    return tensors


def cast_floats(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Cast the floating tensors of ``tensors`` to ``dtype`` in place (one tensor at a time)."""
    for key, value in tensors.items():
        if value.is_floating_point() and value.dtype != dtype:
            tensors[key] = value.to(dtype)


@dataclass
class OriginalParts:
    """Tensors of an original checkpoint renamed to llava-hf names, grouped by component."""

    language: dict[str, torch.Tensor]  # includes lm_head.weight when stored
    projector: dict[str, torch.Tensor]
    tower: dict[str, torch.Tensor]  # empty when the checkpoint does not store the CLIP tower
    dropped: list[str]  # recomputed buffers (rotary inv_freq) that are not weights


def _rename_projector(key: str) -> str | None:
    for old, new in _PROJECTOR_RENAMES.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    return None


def split_original(tensors: dict[str, torch.Tensor], source: Path) -> OriginalParts:
    """Rename every tensor of an original checkpoint; unknown names are an error (listed)."""
    parts = OriginalParts({}, {}, {}, [])
    unknown = []
    for key, value in tensors.items():
        projector = _rename_projector(key)
        if key.endswith("rotary_emb.inv_freq"):
            parts.dropped.append(key)
        elif projector is not None:
            parts.projector[projector] = value
        elif key.startswith(ORIGINAL_TOWER_PREFIX):
            parts.tower[HF_TOWER_PREFIX + key.removeprefix(ORIGINAL_TOWER_PREFIX)] = value
        elif key == "lm_head.weight":
            parts.language[key] = value
        elif key.startswith(_LANGUAGE_PARTS):
            parts.language[HF_LANGUAGE_PREFIX + key.removeprefix("model.")] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConvertError(
            f"{source}: {len(unknown)} tensors have names this converter does not know "
            f"(supported: LLaVA-1.5 layout with an mlp2x_gelu projector): {sorted(unknown)[:8]}"
        )
    if not parts.projector:
        raise ConvertError(f"{source}: no model.mm_projector.* tensors: not an original-format LLaVA checkpoint")
    return parts


def tower_from_folder(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """CLIP vision weights of a local CLIP folder (CLIPModel or CLIPVisionModel layout), llava-hf names."""
    tower, unknown = {}, []
    for key, value in read_tensors(folder, dtype).items():
        if key.startswith(_CLIP_NON_VISION) or key.endswith("position_ids"):
            continue
        short = key.removeprefix("vision_model.")
        if short.startswith(_TOWER_PARTS):
            tower[HF_TOWER_PREFIX + short] = value
        else:
            unknown.append(key)
    if unknown or not tower:
        raise ConvertError(f"{folder} is not a CLIP vision checkpoint (unknown tensors {sorted(unknown)[:5]})")
    return tower


def tower_config(folder: Path | None, hub_id: str) -> CLIPVisionConfig:
    """The tower's config: a local folder's config.json, else the published config of a known hub id."""
    if folder is not None and (folder / "config.json").is_file():
        return CLIPVisionConfig.from_pretrained(folder)
    if hub_id in KNOWN_CLIP_TOWERS:
        return CLIPVisionConfig(**KNOWN_CLIP_TOWERS[hub_id])
    raise ConvertError(
        f"no config for the vision tower {hub_id!r}: pass --vision-tower DIR (a local CLIP folder with config.json)"
    )


@dataclass
class VisionTower:
    config: CLIPVisionConfig
    weights: dict[str, torch.Tensor]
    weights_from: str  # "checkpoint" or the folder the weights were read from
    folder: Path | None  # local CLIP folder (its preprocessor_config.json is used), if any


def _local_tower_folder(given: str | Path | None, hub_id: str) -> Path | None:
    if given is not None:
        folder = Path(given)
        if not folder.is_dir():
            raise ConvertError(f"--vision-tower {folder} does not exist or is not a directory")
        return folder
    candidate = Path(hub_id) if hub_id else None
    return candidate if candidate is not None and candidate.is_dir() else None


def resolve_vision_tower(
    source: Path,
    hub_id: str,
    stored: dict[str, torch.Tensor],
    given: str | Path | None,
    dtype: torch.dtype,
    echo: Callable[[str], None],
) -> VisionTower:
    """Config + weights of the CLIP tower. Weights stored in the checkpoint win over a given folder's."""
    folder = _local_tower_folder(given, hub_id)
    config = tower_config(folder, hub_id)
    if stored:
        if folder is not None and weight_files(folder):
            echo(f"note: the vision tower weights stored in {source} are used; {folder} supplies only its config")
        return VisionTower(config, stored, "checkpoint", folder)
    if folder is None or not weight_files(folder):
        where = f" ({folder} holds no weights)" if folder is not None else ""
        raise ConvertError(
            f"vision tower weights are neither in {source} nor given{where}: the checkpoint references "
            f"{hub_id!r}; pass --vision-tower DIR with a local copy of that CLIP model"
        )
    return VisionTower(config, tower_from_folder(folder, dtype), str(folder), folder)
