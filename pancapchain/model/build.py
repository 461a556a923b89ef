"""Build the trainable model: a llava-hf base (local path or ``tiny``) + LoRA on the language model.

Trainable by default: LoRA on every linear layer of the language model, and the multimodal projector
(``modules_to_save``, so peft saves it inside the adapter and merges it on export). The vision tower is frozen.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoProcessor, LlavaForConditionalGeneration, ProcessorMixin

from pancapchain.config import RecipeConfig
from pancapchain.model.quant import check_qlora_zero_stage, load_4bit, quantize_in_memory
from pancapchain.model.tiny import build_processor, build_tiny_model, build_tokenizer

log = logging.getLogger(__name__)

PROJECTOR = "multi_modal_projector"
VISION_TOWER = "vision_tower"


def resolve_attention(requested: str, dtype: torch.dtype | None = None) -> tuple[str, str | None]:
    """The attention backend to use and, when it differs from what was asked for, why (no logging here).

    ``auto`` -> flash_attention_2 when flash-attn imports and CUDA is present, else sdpa. An explicit
    flash_attention_2 that cannot run (no CUDA, flash-attn missing or broken, fp32 weights) falls back to sdpa.
    """
    if requested not in ("auto", "flash_attention_2"):
        return requested, None
    problem = None
    if not torch.cuda.is_available():
        problem = "no CUDA device"
    elif dtype == torch.float32:
        problem = "flash-attn needs fp16/bf16 weights, the model is fp32"
    else:
        try:
            import flash_attn  # noqa: F401
        except Exception as err:  # ImportError, or an ABI mismatch raising at import time
            problem = f"flash-attn not importable ({type(err).__name__}: {err})"
    if problem is None:
        return "flash_attention_2", None
    if requested == "auto" and problem == "no CUDA device":
        return "sdpa", None  # the expected CPU case: nothing to warn about
    return "sdpa", f"{problem}; using sdpa instead of flash_attention_2"


def select_attention(requested: str, dtype: torch.dtype | None = None) -> str:
    """Resolve the attention backend and log it (a warning when flash_attention_2 was wanted but is unusable)."""
    attn, fallback = resolve_attention(requested, dtype)
    if fallback:
        log.warning("attention: %s", fallback)
    return attn


def select_dtype(precision: str) -> torch.dtype:
    """``auto`` -> bf16 on CUDA with bf16 support, fp16 on other CUDA, fp32 on CPU."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "fp32" or not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def runtime_choices(cfg: RecipeConfig) -> dict[str, str]:
    """What this machine resolved the recipe's ``auto`` settings to (recorded in metrics and checkpoint meta)."""
    dtype = select_dtype(cfg.model.precision)
    attn, _ = resolve_attention(cfg.model.attn_implementation, dtype)
    return {
        "attn_implementation": attn,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "quantization": cfg.model.quantization,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def load_base(
    cfg: RecipeConfig, tokenizer_texts: Iterable[str] = ()
) -> tuple[LlavaForConditionalGeneration, ProcessorMixin]:
    """The frozen base and its processor. ``tiny`` trains its tokenizer on ``tokenizer_texts``.

    A local base with ``model.quantization=4bit`` is loaded 4-bit here; the tiny base is quantized later by
    ``build_trainable`` (after its full-precision weights were saved for the checkpoints).
    """
    dtype = select_dtype(cfg.model.precision)
    attn = select_attention(cfg.model.attn_implementation, dtype)
    if cfg.model.base == "tiny":
        tokenizer = build_tokenizer(tokenizer_texts, cfg.model.tiny.vocab_size, cfg.data.box_format == "bins")
        processor = build_processor(tokenizer, cfg.model.tiny)
        model = build_tiny_model(tokenizer, cfg.model.tiny)
        model.set_attn_implementation(attn)
    else:
        path = Path(cfg.model.base)
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        if cfg.model.quantization == "4bit":
            model = load_4bit(path, dtype, attn)
        else:
            model = LlavaForConditionalGeneration.from_pretrained(
                path, dtype=dtype, attn_implementation=attn, local_files_only=True, use_safetensors=True
            )
    log.info("attention implementation: %s, weights dtype: %s", attn, dtype)
    return model, processor


def language_linear_leaf_names(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of nn.Linear layers inside the language model (lm_head excluded)."""
    names = set()
    for name, module in model.named_modules():
        if ".language_model." in f".{name}." and isinstance(module, torch.nn.Linear):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_target_regex(model: torch.nn.Module, targets: list[str]) -> str:
    """A regex peft full-matches against module names: the chosen leaves, inside the language model only."""
    leaves = language_linear_leaf_names(model) if targets == ["all-linear"] else list(targets)
    if not leaves:
        raise ValueError("no LoRA target modules found in the language model")
    return rf".*language_model\..*\.({'|'.join(re.escape(leaf) for leaf in leaves)})"


def apply_lora(model: LlavaForConditionalGeneration, cfg: RecipeConfig) -> PeftModel:
    """Wrap ``model`` with LoRA; the projector (and an unfrozen vision tower) go to ``modules_to_save``."""
    to_save = []
    if cfg.model.train_projector:
        to_save.append(PROJECTOR)
    if not cfg.model.freeze_vision_tower:
        to_save.append(VISION_TOWER)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_target_regex(model, list(cfg.lora.target_modules)),
        modules_to_save=(to_save + list(cfg.lora.modules_to_save)) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant checkpointing; inputs require grad so LoRA under frozen embeddings still trains."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def build_trainable(
    cfg: RecipeConfig, tokenizer_texts: Iterable[str] = (), save_base_to: Path | None = None
) -> tuple[torch.nn.Module, ProcessorMixin]:
    """Base + LoRA (or full projector/vision training when LoRA is off). Returns (model, processor).

    ``save_base_to`` saves the untouched base and processor first (used for ``tiny``, whose weights exist
    nowhere else); peft injects LoRA layers into the base in place, so this must happen before wrapping.
    """
    if cfg.model.quantization == "4bit":
        check_qlora_zero_stage(cfg.train.deepspeed)
    base, processor = load_base(cfg, tokenizer_texts)
    if save_base_to is not None:
        base.save_pretrained(save_base_to)
        processor.save_pretrained(save_base_to)
    if cfg.model.base == "tiny" and cfg.model.quantization == "4bit":
        base = quantize_in_memory(base, select_dtype(cfg.model.precision))
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    if cfg.lora.enabled:
        model = apply_lora(base, cfg)
    else:
        for name, param in base.named_parameters():
            trainable = (
                (cfg.model.train_projector and PROJECTOR in name)
                or (not cfg.model.freeze_vision_tower and VISION_TOWER in name)
                or (cfg.model.train_language_model and PROJECTOR not in name and VISION_TOWER not in name)
            )
            param.requires_grad_(trainable)
        model = base
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %d / %d (%.2f%%)", n_train, n_all, 100.0 * n_train / max(1, n_all))
    return model, processor


def projector_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of trainable projector parameters (they get their own learning rate)."""
    return {n for n, p in model.named_parameters() if p.requires_grad and PROJECTOR in n}
