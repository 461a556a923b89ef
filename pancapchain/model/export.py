"""Export a training checkpoint as one self-contained llava-hf folder (``pancapchain export``).

The export is what plain ``transformers`` loads (``AutoModelForImageTextToText`` + ``AutoProcessor``): the LoRA
merged into the base with peft's ``merge_and_unload``, the trained ``modules_to_save`` (projector) inside it,
safetensors in the requested dtype, the processor (tokenizer, chat template, image processor), the generation
config, ``recipe.yaml``, ``pancap_meta.json`` (``format: pancapchain-export/1``), any extra trained module
saved beside the adapter as ``<name>.safetensors`` + ``<name>.json`` (e.g. a mask head), copied byte for byte,
and ``README.md``, a Hub model card (``model_card.py``).

Any checkpoint folder works (``out/`` or ``out/checkpoint-N``). A checkpoint trained on a 4-bit base is merged
into the base reloaded unquantized in the requested dtype; a base stored quantized is refused.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
import yaml
from safetensors import safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration, ProcessorMixin

import pancapchain
from pancapchain.data.io import atomic_write_json, atomic_write_text
from pancapchain.infer.references import REFERENCE_TAGS_KEY
from pancapchain.model.checkpoint import (
    CHECKPOINT_FORMAT,
    MASK_STAGES_KEY,
    META_FILE,
    RECIPE_FILE,
    CheckpointError,
    base_path_of,
    read_meta,
)
from pancapchain.model.merge import ADAPTER_WEIGHT_FILES, MergeReport, merge_lora
from pancapchain.model.model_card import CardOptions, export_card
from pancapchain.model.staging import check_output_dir, staged_output

EXPORT_FORMAT = "pancapchain-export/1"
EXPORT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REQUIRED_META = ("base_model", "prompt_version", "system_prompt", "box_format")
# Files of the model itself; any other top-level <name>.safetensors is an extra trained module.
_MODEL_WEIGHTS_RE = re.compile(r"^(adapter_model|model(-\d+-of-\d+)?)\.safetensors$")
_RESERVED_NAMES = {
    "config", "generation_config", "tokenizer", "tokenizer_config", "processor_config", "preprocessor_config",
    "special_tokens_map", "chat_template", "adapter_config", "trainer_state", Path(META_FILE).stem,
}


class ExportError(ValueError):
    """A checkpoint that cannot be exported; the message names the folder and what is wrong."""


@dataclass
class ExtraModule:
    """A trained module saved beside the adapter: ``<name>.safetensors`` weights + ``<name>.json`` config."""

    name: str
    weights: Path
    config: Path


@dataclass
class CheckpointInfo:
    """Everything ``export`` needs to know about a checkpoint folder, validated up front."""

    path: Path
    meta: dict[str, Any]
    recipe: dict[str, Any]
    base: Path | None  # None for a full-weight checkpoint (lora disabled): the folder itself is the model
    step: int | None
    quantization: str
    extra_modules: list[ExtraModule] = field(default_factory=list)

    @property
    def has_adapter(self) -> bool:
        return self.base is not None


@dataclass
class ExportResult:
    out: Path
    meta: dict[str, Any]
    merge: MergeReport | None


def _read_recipe(path: Path) -> dict[str, Any]:
    recipe_file = path / RECIPE_FILE
    if not recipe_file.is_file():
        raise ExportError(f"{path} has no {RECIPE_FILE}: checkpoint metadata is incomplete")
    try:
        recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ExportError(f"{recipe_file}: not valid YAML ({err})") from None
    if not isinstance(recipe, dict):
        raise ExportError(f"{recipe_file}: expected a mapping, got {type(recipe).__name__}")
    return recipe


def _checkpoint_step(path: Path) -> int | None:
    state = path / "trainer_state.json"
    if not state.is_file():
        return None
    return json.loads(state.read_text()).get("global_step")


def _resolve_base(path: Path, meta: dict[str, Any], base: str | Path | None) -> Path:
    if base is not None:
        base = Path(base)
        if not base.is_dir():
            raise ExportError(f"--base {base} does not exist or is not a directory")
        resolved = base
    else:
        try:
            resolved = base_path_of(path, meta)
        except CheckpointError as err:
            raise ExportError(f"{err}; pass --base DIR if the base model moved") from None
    if not (resolved / "config.json").is_file():
        raise ExportError(f"base model folder {resolved} has no config.json")
    if "quantization_config" in json.loads((resolved / "config.json").read_text()):
        raise ExportError(
            f"base model {resolved} is stored quantized; merging into quantized weights is refused: "
            "pass --base with the unquantized model"
        )
    return resolved


def _check_weights(path: Path, meta: dict[str, Any]) -> bool:
    """True when the checkpoint is base + adapter, False for a full-weight one; raise if files are missing."""
    if meta.get("lora", True):
        if not (path / "adapter_config.json").is_file():
            raise ExportError(f"{path} is missing its adapter (adapter_config.json)")
        if not any((path / name).is_file() for name in ADAPTER_WEIGHT_FILES):
            raise ExportError(f"{path} is missing its adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)})")
        return True
    if not (path / "config.json").is_file():
        raise ExportError(f"{path} is a full-weight checkpoint (lora: false) but has no config.json")
    return False


def find_extra_modules(path: Path) -> list[ExtraModule]:
    """Top-level ``<name>.safetensors`` files that are not model weights, each with its ``<name>.json``."""
    modules = []
    for weights in sorted(path.glob("*.safetensors")):
        if _MODEL_WEIGHTS_RE.match(weights.name):
            continue
        name = weights.stem
        config = path / f"{name}.json"
        if name in _RESERVED_NAMES:
            raise ExportError(f"{weights}: extra module name {name!r} clashes with a file the export writes")
        if not config.is_file():
            raise ExportError(f"{weights} has no {config.name} beside it (an extra module needs its config)")
        try:
            json.loads(config.read_text())
            with safe_open(str(weights), framework="pt") as handle:
                list(handle.keys())
        except (OSError, ValueError) as err:
            raise ExportError(f"extra module {name!r} in {path} is unreadable: {err}") from None
        modules.append(ExtraModule(name, weights, config))
    return modules


def inspect_checkpoint(path: str | Path, base: str | Path | None = None) -> CheckpointInfo:
    """Validate a checkpoint folder (metadata, recipe, adapter, base) without loading any weights."""
    path = Path(path)
    try:
        meta = read_meta(path)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    if meta.get("format") == EXPORT_FORMAT:
        raise ExportError(f"{path} is already an export (format {EXPORT_FORMAT}); it needs no merging")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ExportError(f"{path}/{META_FILE}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ExportError(f"{path}/{META_FILE} lacks {missing}: checkpoint metadata is incomplete")
    recipe = _read_recipe(path)
    has_adapter = _check_weights(path, meta)
    resolved_base = _resolve_base(path, meta, base) if has_adapter else None
    quantization = str((recipe.get("model") or {}).get("quantization", "none"))
    return CheckpointInfo(
        path, meta, recipe, resolved_base, _checkpoint_step(path), quantization, find_extra_modules(path)
    )


def load_merged(info: CheckpointInfo, dtype: torch.dtype) -> tuple[torch.nn.Module, MergeReport | None]:
    """The merged model in ``dtype`` (base reloaded unquantized, adapter merged and verified)."""
    source = info.base if info.has_adapter else info.path
    model = LlavaForConditionalGeneration.from_pretrained(
        source, dtype=dtype, local_files_only=True, use_safetensors=True
    )
    report = None
    if info.has_adapter:
        model, report = merge_lora(model, info.path)
    return model.to(dtype).eval(), report


def load_export_processor(info: CheckpointInfo, echo: Callable[[str], None]) -> ProcessorMixin:
    """The checkpoint's processor (saved by training); the base's when the checkpoint has none."""
    has_own = any((info.path / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
    source = info.path if has_own or info.base is None else info.base
    if source != info.path:
        echo(f"note: {info.path} holds no processor; using the base's from {source}")
    processor = AutoProcessor.from_pretrained(source, local_files_only=True)
    if getattr(processor, "chat_template", None) is None:
        echo("warning: the processor has no chat template; `chat`/`infer` will need one")
    return processor


def export_meta(info: CheckpointInfo, dtype: str, report: MergeReport | None) -> dict[str, Any]:
    keep = ("base_model", "prompt_version", "system_prompt", "box_format", "box_features", "item_order", "label_answer",
            "caption_mentions", "stages", "box_feature_span", "chain_rows", MASK_STAGES_KEY, REFERENCE_TAGS_KEY)
    return {
        "format": EXPORT_FORMAT,
        "pancapchain_version": pancapchain.__version__,
        **{key: info.meta[key] for key in keep if key in info.meta},
        "recipe": info.recipe,
        "dtype": str(EXPORT_DTYPES[dtype]).removeprefix("torch."),
        "source_checkpoint": str(info.path.resolve()),
        "checkpoint_step": info.step,
        "training_quantization": info.quantization,
        "merge": report.to_dict() if report else None,
        "extra_modules": {m.name: {"weights": m.weights.name, "config": m.config.name} for m in info.extra_modules},
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__},
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _fill_generation_ids(model: torch.nn.Module, processor: ProcessorMixin) -> None:
    gen, tok = model.generation_config, processor.tokenizer
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, attr, None) is None and getattr(tok, attr, None) is not None:
            setattr(gen, attr, getattr(tok, attr))


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    dtype: str = "bf16",
    force: bool = False,
    base: str | Path | None = None,
    echo: Callable[[str], None] = print,
    card: CardOptions | None = None,
) -> ExportResult:
    """Merge ``checkpoint`` into a standalone folder at ``out`` (see the module docstring for its contents)."""
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {sorted(EXPORT_DTYPES)}")
    info = inspect_checkpoint(checkpoint, base)
    out = Path(out)
    inputs = [info.path] + ([info.base] if info.base else [])
    check_output_dir(out, force, inputs)  # fail before the slow part
    if info.quantization != "none":
        echo(
            f"checkpoint was trained on a {info.quantization} (QLoRA) base: merging into the base reloaded "
            f"unquantized in {dtype} from {info.base}, never into quantized weights"
        )
    echo(f"merging {info.path} (step {info.step}) into {info.base or 'its own full weights'} as {dtype}")
    meta = export_meta(info, dtype, None)
    export_card(info.path, meta, out.name, card)  # a bad --eval stops the export here, before the merge
    model, report = load_merged(info, EXPORT_DTYPES[dtype])
    if report is not None:
        echo(report.summary())
    processor = load_export_processor(info, echo)
    _fill_generation_ids(model, processor)
    meta = export_meta(info, dtype, report)
    model_card = export_card(info.path, meta, out.name, card)
    with staged_output(out, force, inputs) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        shutil.copy2(info.path / RECIPE_FILE, staging / RECIPE_FILE)
        for module in info.extra_modules:
            shutil.copy2(module.weights, staging / module.weights.name)
            shutil.copy2(module.config, staging / module.config.name)
            echo(f"copied extra module {module.name!r} ({module.weights.name}, {module.config.name})")
        atomic_write_json(staging / META_FILE, meta)
        atomic_write_text(staging / "README.md", str(model_card))
    echo(f"export written to {out}")
    return ExportResult(out, meta, report)
