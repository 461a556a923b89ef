"""Convert an original-format LLaVA checkpoint (llava-v1.5, ASMv2) to the llava-hf layout (``convert-llava``).

Input: a ``LlavaLlamaForCausalLM`` folder (config.json with ``mm_vision_tower``, ``mm_hidden_size``,
``mm_projector_type: mlp2x_gelu``, ``mm_vision_select_layer``, ``image_aspect_ratio``; weights; tokenizer).
Output: a ``LlavaForConditionalGeneration`` folder that ``AutoModelForImageTextToText`` + ``AutoProcessor`` load,
usable as ``model.base`` of a recipe. The original tokenizer has no ``<image>`` token (LLaVA splices image
features in by position): it is added as a special token, and ``<pad>`` too when there is no pad token; the
embedding and lm_head rows of new ids are the mean of the original rows. The processor gets the vicuna_v1
chat template and LLaVA's "pad" preprocessing (pad to a mean-colour square, then resize).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import pancapchain
from pancapchain.constants import IMAGE_TOKEN
from pancapchain.data.io import atomic_write_json
from pancapchain.model.llava_original import (
    ConvertError,
    OriginalParts,
    VisionTower,
    cast_floats,
    read_tensors,
    resolve_vision_tower,
    split_original,
)
from pancapchain.model.staging import check_output_dir, staged_output
from pancapchain.model.tiny import VICUNA_CHAT_TEMPLATE

CONVERT_FORMAT = "pancapchain-convert/1"
CONVERT_RECORD = "convert_config.json"
PAD_TOKEN = "<pad>"
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
_ASPECT_PAD = {"pad": True, "square": False}
_EMBED = "model.language_model.embed_tokens.weight"
_LM_HEAD = "lm_head.weight"
# Bookkeeping keys of a config dict that must not reach the new text config.
_NOT_TEXT_KEYS = {"architectures", "model_type", "transformers_version", "_name_or_path", "dtype", "torch_dtype"}


@dataclass
class ConvertResult:
    out: Path
    record: dict[str, Any]


def read_original_config(src: Path) -> dict[str, Any]:
    """The source config.json, checked for the LLaVA-1.5 features this converter supports (all problems)."""
    path = src / "config.json"
    if not path.is_file():
        raise ConvertError(f"{src} has no config.json: not a model folder")
    cfg = json.loads(path.read_text())
    problems = []
    if not cfg.get("mm_vision_tower"):
        problems.append("mm_vision_tower is missing (not a multimodal LLaVA checkpoint)")
    if cfg.get("mm_projector_type", "linear") != "mlp2x_gelu":
        problems.append(f"mm_projector_type {cfg.get('mm_projector_type', 'linear')!r}: only 'mlp2x_gelu' maps")
    if cfg.get("mm_vision_select_feature", "patch") not in _SELECT_STRATEGY:
        problems.append(f"mm_vision_select_feature {cfg.get('mm_vision_select_feature')!r} not in patch|cls_patch")
    if (cfg.get("image_aspect_ratio") or "square") not in _ASPECT_PAD:
        problems.append(f"image_aspect_ratio {cfg.get('image_aspect_ratio')!r} not in pad|square (anyres unsupported)")
    if cfg.get("mm_patch_merge_type", "flat") != "flat":
        problems.append(f"mm_patch_merge_type {cfg.get('mm_patch_merge_type')!r}: only 'flat' is supported")
    if cfg.get("mm_use_im_start_end"):
        problems.append("mm_use_im_start_end=true (image start/end tokens) has no llava-hf equivalent")
    if problems:
        raise ConvertError(f"{path}: cannot convert:\n  - " + "\n  - ".join(problems))
    return cfg


def output_dtype(requested: str | None, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """``requested`` (bf16|fp16|fp32), else the dtype the source config declares, else its stored dtype."""
    if requested is not None:
        if requested not in DTYPES:
            raise ConvertError(f"dtype {requested!r} is not one of {sorted(DTYPES)}")
        return DTYPES[requested]
    declared = cfg.get("torch_dtype") or cfg.get("dtype")
    if declared in _DTYPE_NAMES:
        return _DTYPE_NAMES[declared]
    return next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)


def load_original_tokenizer(src: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConvertError(f"cannot load the tokenizer of {src}: {err}") from None


def add_llava_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add ``<image>`` (special) and, when the tokenizer has no pad token, ``<pad>``; returns what was added."""
    added = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added.append(PAD_TOKEN)
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    return added


def _with_mean_rows(weight: torch.Tensor, n_known: int, new_ids: list[int]) -> torch.Tensor:
    """``weight`` grown to hold ``new_ids``; each new id's row is the mean of the first ``n_known`` rows."""
    rows = max([weight.shape[0]] + [i + 1 for i in new_ids])
    mean = weight[:n_known].float().mean(dim=0).to(weight.dtype)
    grown = torch.cat([weight, mean.unsqueeze(0).expand(rows - weight.shape[0], -1)]) if rows > weight.shape[0] else weight.clone()
    grown[new_ids] = mean
    return grown


def resize_vocab(parts: OriginalParts, n_known: int, new_ids: list[int], tied: bool) -> int:
    """Give the embedding and lm_head rows for ``new_ids`` (mean-initialised); returns the new vocab size."""
    language = parts.language
    if _EMBED not in language:
        raise ConvertError("the checkpoint has no model.embed_tokens.weight")
    if _LM_HEAD not in language and tied:
        language[_LM_HEAD] = language[_EMBED]
    if _LM_HEAD not in language:
        raise ConvertError("the checkpoint has no lm_head.weight and tie_word_embeddings is false")
    if language[_EMBED].shape[0] < n_known:
        raise ConvertError(f"tokenizer has {n_known} tokens but the embedding only {language[_EMBED].shape[0]} rows")
    if new_ids:
        language[_EMBED] = _with_mean_rows(language[_EMBED], n_known, new_ids)
        language[_LM_HEAD] = language[_EMBED] if tied else _with_mean_rows(language[_LM_HEAD], n_known, new_ids)
    return int(language[_EMBED].shape[0])


def text_config(cfg: dict[str, Any], vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The Llama text config: the source's Llama fields with the grown vocabulary and the pad id."""
    known = set(LlamaConfig().to_dict()) | {"rope_theta", "rope_scaling"}
    fields = {k: v for k, v in cfg.items() if k in known and k not in _NOT_TEXT_KEYS}
    fields.update(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(**fields)


def llava_config(cfg: dict[str, Any], text: LlamaConfig, tower: VisionTower, image_token_id: int) -> LlavaConfig:
    vision = tower.config
    if cfg.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise ConvertError(
            f"mm_hidden_size {cfg['mm_hidden_size']} differs from the vision tower's hidden size {vision.hidden_size}"
        )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=int(cfg.get("mm_vision_select_layer", -1)),
        vision_feature_select_strategy=_SELECT_STRATEGY[cfg.get("mm_vision_select_feature", "patch")],
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _edge(value: Any, fallback: int) -> int:
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value.get("height") or fallback)
    return int(value) if value else fallback


def image_processor(tower: VisionTower, src: Path, aspect: str) -> LlavaImageProcessorPil:
    """CLIP preprocessing of the tower (its preprocessor_config.json when available), with LLaVA's padding."""
    settings: dict[str, Any] = {}
    for folder in (tower.folder, src):
        if folder is not None and (folder / "preprocessor_config.json").is_file():
            settings = json.loads((folder / "preprocessor_config.json").read_text())
            break
    size = tower.config.image_size
    return LlavaImageProcessorPil(
        do_pad=_ASPECT_PAD[aspect],
        size={"shortest_edge": _edge(settings.get("size"), size)},
        crop_size={"height": _edge(settings.get("crop_size"), size), "width": _edge(settings.get("crop_size"), size)},
        image_mean=settings.get("image_mean", list(OPENAI_CLIP_MEAN)),
        image_std=settings.get("image_std", list(OPENAI_CLIP_STD)),
    )


def assemble_model(config: LlavaConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype):
    """Build the llava-hf model without allocating random weights and load ``tensors`` strictly."""
    config.dtype = dtype
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    try:
        result = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatches
        raise ConvertError(f"weights do not fit the llava-hf model built from the config: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConvertError(
            f"converted weights do not match LlavaForConditionalGeneration: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return model


def generation_config(src: Path, config: LlavaConfig, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    if (src / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(src, local_files_only=True)
    else:
        gen = GenerationConfig.from_model_config(config.text_config)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, attr, None) is not None:
            setattr(gen, attr, getattr(tokenizer, attr))
    return gen


def convert_llava(
    src: str | Path,
    out: str | Path,
    vision_tower: str | Path | None = None,
    dtype: str | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> ConvertResult:
    """Convert the original LLaVA checkpoint in ``src`` into a llava-hf folder at ``out``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ConvertError(f"--src {src} does not exist or is not a directory")
    cfg = read_original_config(src)
    check_output_dir(out, force, [src])
    tokenizer = load_original_tokenizer(src)
    tensors = read_tensors(src, None)
    torch_dtype = output_dtype(dtype, cfg, tensors)
    cast_floats(tensors, torch_dtype)
    parts = split_original(tensors, src)
    del tensors
    tower = resolve_vision_tower(src, cfg["mm_vision_tower"], parts.tower, vision_tower, torch_dtype, echo)
    n_known = len(tokenizer)
    added = add_llava_tokens(tokenizer)
    new_ids = tokenizer.convert_tokens_to_ids(added)
    tied = bool(cfg.get("tie_word_embeddings", False))
    vocab = resize_vocab(parts, n_known, new_ids, tied)
    if added:
        echo(f"added tokens {dict(zip(added, new_ids))} to the tokenizer; vocabulary {n_known} -> {vocab} rows")
    config = llava_config(cfg, text_config(cfg, vocab, tokenizer), tower, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    model = assemble_model(config, {**parts.language, **parts.projector, **tower.weights}, torch_dtype)
    model.generation_config = generation_config(src, config, tokenizer)
    processor = LlavaProcessor(
        image_processor=image_processor(tower, src, cfg.get("image_aspect_ratio") or "square"),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=VICUNA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # the CLS token
        image_token=IMAGE_TOKEN,
    )
    record = {
        "format": CONVERT_FORMAT,
        "pancapchain_version": pancapchain.__version__,
        "source": str(src.resolve()),
        "mm_vision_tower": cfg["mm_vision_tower"],
        "vision_tower_weights_from": tower.weights_from,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "added_tokens": dict(zip(added, new_ids)),
        "vocab_size": vocab,
        "image_aspect_ratio": cfg.get("image_aspect_ratio") or "square",
        "vision_feature_layer": config.vision_feature_layer,
        "dropped_buffers": parts.dropped,
        "transformers_version": transformers.__version__,
    }
    with staged_output(out, force, [src]) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        atomic_write_json(staging / CONVERT_RECORD, record)
    echo(f"converted {src} -> {out} ({record['dtype']}, vision tower from {tower.weights_from})")
    return ConvertResult(out, record)
