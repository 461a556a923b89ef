"""QLoRA loading: 4-bit NF4 weights for the language model's linear layers, everything else in full precision.

Quantized: every ``nn.Linear`` inside the language model (attention and MLP projections) -> bitsandbytes
``Linear4bit`` computing in the training dtype. Kept in the compute dtype: the vision tower (4-bit CLIP attention
breaks, see docs/scaling.md), the multimodal projector (trained through ``modules_to_save``), ``lm_head``,
embeddings and norms.

transformers 5 matches ``llm_int8_skip_modules`` from the *start* of a module path or as a suffix, so the
LLaVA-era short names (``"mm_projector"``, ``"vision_tower"``) no longer match ``model.vision_tower.*``: the
tower would be quantized silently. The skip list is therefore derived from the model's own module tree, and
the loaded layout is verified (``verify_4bit_layout``) before training starts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, BitsAndBytesConfig, LlavaForConditionalGeneration, PretrainedConfig

log = logging.getLogger(__name__)

LANGUAGE_MODEL = "language_model"


class QuantizationError(ValueError):
    """A quantized layout or setting that would train wrongly; the message says what and how to fix it."""


def in_language_model(module_name: str) -> bool:
    return f".{LANGUAGE_MODEL}." in f".{module_name}."


def skip_prefixes(model: torch.nn.Module) -> list[str]:
    """Full paths of the largest subtrees outside the language model that hold linear layers.

    For llava-hf: ``["lm_head", "model.multi_modal_projector", "model.vision_tower"]``. A subtree that contains
    the language model is descended into; the language model itself is never listed.
    """
    prefixes: list[str] = []

    def visit(module: torch.nn.Module, name: str) -> None:
        names = [n for n, _ in module.named_modules()]
        if name.rsplit(".", 1)[-1] == LANGUAGE_MODEL:
            return
        if any(n.rsplit(".", 1)[-1] == LANGUAGE_MODEL for n in names[1:]):
            for child_name, child in module.named_children():
                visit(child, f"{name}.{child_name}" if name else child_name)
            return
        if any(isinstance(m, torch.nn.Linear) for m in module.modules()):
            prefixes.append(name)

    visit(model, "")
    return sorted(prefixes)


def skip_prefixes_for_config(config: PretrainedConfig) -> list[str]:
    """``skip_prefixes`` of the model a config describes, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        skeleton = LlavaForConditionalGeneration(config)
    return skip_prefixes(skeleton)


def bnb_4bit_config(compute_dtype: torch.dtype, skip: list[str]) -> BitsAndBytesConfig:
    """NF4 + double quantization (the QLoRA recipe); storage in the compute dtype so ZeRO/FSDP can shard it."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
        llm_int8_skip_modules=list(skip),
    )


def _device_map() -> dict[str, int | str]:
    """Each rank loads its own full 4-bit copy onto its own GPU (QLoRA runs data-parallel or ZeRO-2)."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def load_4bit(path: str | Path, dtype: torch.dtype, attn: str) -> LlavaForConditionalGeneration:
    """Load a local llava-hf checkpoint with 4-bit language-model linears; raises if the layout is wrong."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "quantization_config", None):
        raise QuantizationError(
            f"{path} is already quantized ({config.quantization_config}); QLoRA quantizes a full-precision "
            "base on the fly: point model.base at the bf16/fp16 checkpoint"
        )
    skip = skip_prefixes_for_config(config)
    model = LlavaForConditionalGeneration.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=attn,
        quantization_config=bnb_4bit_config(dtype, skip),
        device_map=_device_map(),
        local_files_only=True,
        use_safetensors=True,
    )
    counts = verify_4bit_layout(model)
    log.info("4-bit: %d language-model linears quantized; kept in %s: %s", counts["quantized"], dtype, skip)
    return model


def quantize_in_memory(model: LlavaForConditionalGeneration, dtype: torch.dtype) -> LlavaForConditionalGeneration:
    """4-bit copy of an in-memory model (the tiny base), by a round trip through a temporary directory."""
    attn = model.config._attn_implementation or "sdpa"
    name = model.config.name_or_path
    with tempfile.TemporaryDirectory(prefix="pancap_q4_") as tmp:
        model.save_pretrained(tmp)
        quantized = load_4bit(tmp, dtype, attn)
    # not the deleted temporary directory (peft records the model's name_or_path in adapter_config.json)
    quantized.config.name_or_path = quantized.name_or_path = name
    return quantized


def is_4bit_linear(module: torch.nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)


def verify_4bit_layout(model: torch.nn.Module) -> dict[str, int]:
    """Check that exactly the language model's linear layers are 4-bit; returns counts of both kinds.

    Raises:
        QuantizationError: naming modules quantized outside the language model, or language-model linears
        left in full precision.
    """
    wrong, missed, quantized, full = [], [], 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        q = is_4bit_linear(module)
        quantized += int(q)
        full += int(not q)
        if q and not in_language_model(name):
            wrong.append(name)
        elif not q and in_language_model(name):
            missed.append(name)
    if wrong or missed or quantized == 0:
        raise QuantizationError(
            "4-bit layout is wrong: "
            + (f"quantized outside the language model: {wrong[:5]} ({len(wrong)}); " if wrong else "")
            + (f"language-model linears left unquantized: {missed[:5]} ({len(missed)}); " if missed else "")
            + ("no 4-bit layer at all; " if quantized == 0 else "")
            + "only language-model linear layers may be quantized"
        )
    return {"quantized": quantized, "full_precision": full}


def zero_stage(deepspeed_json: str = "") -> int:
    """ZeRO stage of this run: the recipe's ``train.deepspeed`` JSON, else an accelerate-launched config, else 0."""
    path = deepspeed_json or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if path and Path(path).is_file():
        return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0") or 0)


def check_qlora_zero_stage(deepspeed_json: str = "") -> None:
    """QLoRA runs with plain data parallelism or ZeRO-2; ZeRO-3 is refused before any weight is loaded."""
    stage = zero_stage(deepspeed_json)
    if stage >= 3:
        raise QuantizationError(
            "model.quantization=4bit with DeepSpeed ZeRO-3 is not supported by this recipe: the 4-bit base "
            "(~7 GB for 13B) fits every GPU, so use recipes/accelerate/multi_gpu_zero2.yaml "
            "(train.deepspeed=recipes/deepspeed/zero2.json) or no DeepSpeed"
        )
