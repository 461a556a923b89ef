"""Typed recipe configuration: YAML + ``key=value`` overrides -> validated ``RecipeConfig``.

Sections map 1:1 to dataclasses. OmegaConf's structured merge rejects unknown keys and wrong types;
``validate`` then collects every cross-field problem and raises once with what to change. Every field carries
its documentation (``doc(...)`` metadata), printed by ``train.py --recipe R --print-recipe``.
This module imports no model code (parsing a recipe does not load transformers).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pancapchain.constants import ANSWER_LAYOUTS, BOX_FORMATS, EXTRA_TASKS, LOC_TOKENS, STAGES, TASKS

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")
QUANT_CHOICES = ("none", "4bit")


class ConfigError(ValueError):
    """A recipe that cannot run; the message lists every problem and how to fix it."""


def doc(text: str, default: Any = MISSING, *, factory: Any = MISSING) -> Any:
    """A dataclass field with its documentation in ``metadata["doc"]`` (a test requires one on every field)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class TinyModelConfig:
    """Sizes of the tiny base (used by tests and the CPU demo recipe); built by pancapchain.model.tiny."""

    hidden_size: int = doc("language model width", 64)
    intermediate_size: int = doc("language model MLP width", 128)
    num_layers: int = doc("language model decoder layers", 2)
    num_heads: int = doc("language model attention heads", 4)
    num_kv_heads: int = doc("language model key/value heads (grouped-query attention)", 2)
    vision_hidden_size: int = doc("vision tower width", 32)
    vision_layers: int = doc("vision tower layers", 2)
    vision_heads: int = doc("vision tower attention heads", 2)
    image_size: int = doc("side in pixels of the square the vision tower sees", 64)
    patch_size: int = doc("vision patch side in pixels: (image_size / patch_size)^2 image tokens", 8)
    vocab_size: int = doc("size of the byte-level BPE trained on the training texts", 1024)
    max_position_embeddings: int = doc("longest sequence the language model accepts", 2048)
    vision_position_init: str = doc(
        "initial vision position embeddings: random (CLIP's init) or sincos (2D sine-cosine of each patch's row "
        "and column); only the start differs, both are trained. A random tower must first discover where its "
        "patches are before any box can be learned; sincos starts from that", "random")
    vision_feature_layer: int = doc(
        "the tower layer the projector reads: -2 (LLaVA's penultimate layer) suits a CLIP whose last layer serves "
        "its contrastive objective; a tower trained from scratch wastes its last layer with -2, so use -1", -2)
    seed: int = doc("seed of the tiny base's random initialisation", 0)


@dataclass
class ModelSection:
    base: str = doc("'tiny' (built from model.tiny) or a local llava-hf checkpoint directory", "tiny")
    tiny: TinyModelConfig = doc("sizes of the tiny base (used when base=tiny)", factory=TinyModelConfig)
    attn_implementation: str = doc(
        f"one of {ATTENTION_CHOICES}; auto: flash_attention_2 when importable on CUDA, else sdpa", "auto")
    precision: str = doc(f"one of {PRECISION_CHOICES}; auto: bf16 where supported, else fp16 on CUDA, fp32 on CPU",
                         "auto")
    quantization: str = doc("none, or 4bit: QLoRA (language model linear layers only)", "none")
    freeze_vision_tower: bool = doc("keep the vision tower's weights fixed", True)
    train_projector: bool = doc("train the multimodal projector in full (learning rate train.projector_lr)", True)
    train_language_model: bool = doc(
        "full fine-tuning of the language model (embeddings and head included) instead of LoRA: the tiny "
        "recipes' choice, since a randomly initialised base cannot learn the task through low-rank updates", False)
    gradient_checkpointing: bool = doc("recompute activations in backward: less memory, slower steps", False)


@dataclass
class LoraSection:
    enabled: bool = doc("train LoRA adapters on the language model (peft)", True)
    r: int = doc("LoRA rank", 8)
    alpha: int = doc("LoRA scaling alpha (the update is scaled by alpha / r)", 16)
    dropout: float = doc("dropout on the LoRA input, in [0, 1)", 0.05)
    target_modules: list[str] = doc(
        "leaf names of the language model's linear layers; all-linear finds them all (LLaVA's choice)",
        factory=lambda: ["all-linear"])
    modules_to_save: list[str] = doc(
        "extra modules trained in full and saved with the adapter (peft modules_to_save), e.g. a tiny base's "
        "randomly initialised [embed_tokens, lm_head]: LoRA alone cannot fix random embeddings", factory=list)


@dataclass
class DataSection:
    train: str = doc("JSONL of panoptic samples to train on", "")
    val: str = doc("optional JSONL of panoptic samples for the eval loss", "")
    image_root: str = doc("directory image paths are relative to; default: the directory of each JSONL", "")
    box_format: str = doc(f"how boxes are written in prompts and answers, one of {BOX_FORMATS}", "asmv2")
    prompt_version: str = doc("prompt set under prompts/<version>/", "v1")
    stages: dict[str, float] = doc(
        "task -> loss weight; 0 = not trained (keys merge with these defaults, so set 0 to drop one). Keys: the "
        "four chain stages (default 1) and the extra box tasks segcap/region (default 0)",
        factory=lambda: {t: float(t in STAGES) for t in TASKS})
    stage_rates: dict[str, float | None] = doc(
        "task -> training examples per scene per epoch (default 1): 2 writes the task twice, 0.5 keeps it for "
        "about half of the scenes (seeded); the eval loss always uses one of each; null unsets a recipe's rate "
        "(e.g. data.stage_rates.discover=null when an override drops the task)", factory=dict)
    system_prompt: str = doc(
        "chat system text before every prompt: 'default' = the prompt set's (LLaVA-1.5's), '' = none, or a text; "
        "the checkpoint records it and inference uses it", "default")
    discover_ratio: list[float] = doc(
        "[low, high]: stage 3 hides a fraction f ~ U(low, high) of the entities, to be discovered",
        factory=lambda: [0.3, 0.7])
    item_order: str = doc(
        "order of the items in stage 1-3 answers: caption (entity order, the paper's data) or raster (reading "
        "order: top band, then left to right)", "caption")
    label_answer: str = doc(
        "how stage-2 answers write an item: tag_first (tag <box>..</box>, the paper's) or box_first (<box>..</box> "
        "tag: with data.box_features the tag is written right after the box that shows it)", "tag_first")
    caption_mentions: str = doc(
        "where caption (and direct) answers put a mention's box: tag_first (phrase <box>..</box>, the paper's) or "
        "box_first (<box>..</box> phrase; generated captions are moved back before parsing and scoring)", "tag_first")
    chain_rows: str = doc(
        "how the chain stages become training rows: stages (one row per stage, the paper's) or conversation (one "
        "row per scene: localize, label and caption as three turns, the image once; stage 3 stays its own row)",
        "stages")
    box_features: bool = doc(
        "add to each </box> token's input embedding the mean image feature inside its box, in prompts and answers "
        "(GPT4RoI/Osprey-style region features; pancapchain.model.box_features)", False)
    box_feature_span: int = doc(
        "with box_features: the feature also goes to up to N tokens after each </box>, until a separator "
        "(, . newline, the next box), so the words that name the box read it directly; 0 = the </box> only", 0)
    max_length: int = doc("longest tokenized row (image tokens included); longer rows are dropped and reported",
                          2048)
    strict: bool = doc("fail on the first bad record instead of skipping and reporting it", False)
    max_val_samples: int = doc("use only the first N records of data.val (0 = all)", 0)


@dataclass
class TrainSection:
    output_dir: str = doc("where checkpoints, logs, metrics.json and the final model go", "runs/tiny")
    epochs: float = doc("passes over the training rows (an upper bound under max_steps or max_seconds)", 1.0)
    max_steps: int = doc("optimizer steps to run; -1 = as many as the epochs give", -1)
    max_seconds: float = doc(
        "wall-clock budget in seconds of optimizer steps (0 = off): training stops when it is spent and the LR "
        "schedule (warmup, then cosine/linear decay) runs on elapsed time", 0.0)
    per_device_batch_size: int = doc("rows per micro-batch on each device", 4)
    eval_batch_size: int = doc("rows per eval batch on each device", 8)
    grad_accum: int = doc("micro-batches accumulated into one optimizer step", 1)
    learning_rate: float = doc("peak learning rate (adapters / trained language model)", 2e-4)
    projector_lr: float = doc("peak learning rate of the multimodal projector", 2e-5)
    loc_label_sigma: float = doc(
        "data.box_format=bins only: train each <loc_i> target against a Gaussian of this many bins around the "
        "true bin instead of one-hot (a near miss costs less than a far one); 0 = one-hot. Eval loss stays one-hot",
        0.0)
    weight_decay: float = doc("AdamW weight decay (not on biases and norms)", 0.0)
    warmup_ratio: float = doc("fraction of the steps (or of max_seconds) spent warming the LR up", 0.03)
    scheduler: str = doc("transformers LR scheduler type (cosine, linear, constant, ...)", "cosine")
    max_grad_norm: float = doc("gradient clipping norm", 1.0)
    logging_steps: int = doc("log the losses every N optimizer steps", 10)
    eval_steps: int = doc("eval loss every N steps; 0 = evaluate at start and end only", 0)
    save_steps: int = doc("checkpoint every N steps; 0 = at the end of each epoch", 0)
    save_total_limit: int = doc("checkpoints kept in output_dir (older ones are deleted)", 3)
    seed: int = doc("seed of the model init, data order and stage-3 splits", 42)
    group_by_length: bool = doc("batch rows of similar length together (less padding)", True)
    dataloader_workers: int = doc("data loader worker processes (0 = in the training process)", 0)
    report_to: list[str] = doc("logging integrations (tensorboard, wandb, ...; [] = none)",
                               factory=lambda: ["tensorboard"])
    resume: str = doc("auto (latest checkpoint in output_dir if any) | never | a checkpoint path", "auto")
    deepspeed: str = doc(
        "DeepSpeed JSON ('auto' values filled by the Trainer); or pass it through an accelerate config", "")
    nonfinite_loss: str = doc("on a NaN/inf loss or gradient norm: stop (with the step and sample ids) or skip "
                              "the step", "stop")


@dataclass
class MaskSection:
    """SGDiff-style mask head trained jointly (see docs/mask_head.md)."""

    enabled: bool = doc("attach and train the mask head", False)
    backend: str = doc("light (MaskFormer-style, no extra weights) | sam (needs sam_path)", "light")
    sam_path: str = doc("local SamModel checkpoint directory for backend=sam", "")
    dim: int = doc("mask embedding width (256 for real models)", 64)
    upsample: int = doc("x2 stages of the pixel decoder: mask side = patch grid * 2**upsample", 2)
    box_prior: bool = doc("light head: the entity's box (from the text) as a learned +-1 prior on the logits", True)
    pixel_skip: int = doc("light head: channels of a conv branch on the image pixels the tower saw, joined to the "
                          "pixel decoder before its last conv, so masks follow the pixels' edges (0: off)", 0)
    stages: list[str] = doc(
        "tasks whose answers' box groups are supervised with the entity masks (tasks not trained add nothing)",
        factory=lambda: list(TASKS))
    bce_weight: float = doc("weight of the sigmoid BCE mask loss", 2.0)
    dice_weight: float = doc("weight of the Dice mask loss", 0.5)
    mecl_weight: float = doc("weight of MECL, the mask-word contrastive loss; 0 turns it (and the word projection) "
                             "off", 0.1)
    tau: float = doc("MECL InfoNCE temperature", 0.07)
    tau_g: float = doc("MECL matching-score softmax temperature (0: max matching, large: mean)", 0.1)


@dataclass
class RecipeConfig:
    model: ModelSection = doc("the base model and what of it is trained", factory=ModelSection)
    lora: LoraSection = doc("LoRA adapters (peft)", factory=LoraSection)
    data: DataSection = doc("training data and how it becomes stage rows", factory=DataSection)
    train: TrainSection = doc("the optimisation (transformers Trainer arguments)", factory=TrainSection)
    mask: MaskSection = doc("the jointly trained mask head", factory=MaskSection)

    def to_dict(self) -> dict:
        return asdict(self)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Merge defaults <- YAML file <- ``key=value`` overrides, then validate."""
    schema = OmegaConf.structured(RecipeConfig)
    try:
        merged = schema
        if path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(str(path)))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: RecipeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
        # a dotlist override cannot delete a dict key, so a null rate is how one unsets the recipe's rate
        cfg.data.stage_rates = {t: r for t, r in cfg.data.stage_rates.items() if r is not None}
    except OmegaConfBaseException as err:
        where = f" in {path}" if path else ""
        raise ConfigError(f"recipe{where}: {err.msg if hasattr(err, 'msg') else err}") from None
    validate(cfg)
    return cfg


def validate(cfg: RecipeConfig) -> None:
    """Raise ConfigError listing every problem (not just the first)."""
    problems: list[str] = []
    m, lo, d, t = cfg.model, cfg.lora, cfg.data, cfg.train
    if m.base != "tiny" and not Path(m.base).is_dir():
        problems.append(f"model.base={m.base!r}: not 'tiny' and not an existing local directory")
    if m.attn_implementation not in ATTENTION_CHOICES:
        problems.append(f"model.attn_implementation must be one of {ATTENTION_CHOICES}")
    if m.precision not in PRECISION_CHOICES:
        problems.append(f"model.precision must be one of {PRECISION_CHOICES}")
    problems += precision_problems(m.precision)
    if m.quantization not in QUANT_CHOICES:
        problems.append(f"model.quantization must be one of {QUANT_CHOICES}")
    if m.quantization != "none" and not lo.enabled:
        problems.append("model.quantization=4bit needs lora.enabled=true (quantized weights cannot be trained)")
    if lo.enabled and (lo.r <= 0 or lo.alpha <= 0):
        problems.append("lora.r and lora.alpha must be positive")
    if not 0.0 <= lo.dropout < 1.0:
        problems.append("lora.dropout must be in [0, 1)")
    if lo.enabled and m.train_language_model:
        problems.append("model.train_language_model=true (full fine-tuning) contradicts lora.enabled=true; "
                        "set one of them to false")
    if not lo.enabled and not m.train_projector and m.freeze_vision_tower and not m.train_language_model:
        problems.append("nothing to train: enable lora, model.train_projector or unfreeze the vision tower")
    if d.box_format not in BOX_FORMATS:
        problems.append(f"data.box_format must be one of {BOX_FORMATS}")
    if m.tiny.vision_position_init not in ("random", "sincos"):
        problems.append(f"model.tiny.vision_position_init must be random or sincos, not {m.tiny.vision_position_init!r}")
    problems += [f"data.{key} must be one of {ANSWER_LAYOUTS}, not {value!r}" for key, value in
                 (("label_answer", d.label_answer), ("caption_mentions", d.caption_mentions)) if value not in ANSWER_LAYOUTS]
    if d.box_features and d.box_format == "normalized":
        problems.append("data.box_features=true needs boxes on the padded square (box_format bins or asmv2), "
                        "not normalized")
    if d.box_feature_span < 0 or (d.box_feature_span and not d.box_features):
        problems.append("data.box_feature_span must be >= 0, and > 0 only with data.box_features=true")
    if d.item_order not in ("caption", "raster"):
        problems.append(f"data.item_order must be caption or raster, not {d.item_order!r}")
    if d.box_format == "bins" and m.base != "tiny" and not base_has_loc_tokens(m.base):
        problems.append("data.box_format=bins needs <loc_i> tokens, which only the tiny base's tokenizer has "
                        "(built by `tiny` or saved by `pancapchain pretrain-tiny`); use asmv2 (the paper's "
                        "format) for a pretrained base")
    unknown = sorted(set(d.stages) - set(TASKS))
    if unknown:
        problems.append(f"data.stages has unknown stages {unknown}; known: {list(TASKS)}")
    problems += prompt_problems(d.prompt_version, [t for t in EXTRA_TASKS if d.stages.get(t, 0.0) > 0])
    if any(w < 0 for w in d.stages.values()) or not any(w > 0 for w in d.stages.values()):
        problems.append("data.stages weights must be >= 0 with at least one stage > 0")
    from pancapchain.data.stages import discover_ratio_problem  # the one rule; late: data depends on config
    from pancapchain.data.task_rows import chain_rows_problem, rate_problems

    problems += rate_problems(d.stages, d.stage_rates)

    problems += [f"data.{p}" for p in (discover_ratio_problem(d.discover_ratio),
                                        chain_rows_problem(d.chain_rows, d.stages, d.stage_rates)) if p]
    if cfg.train.loc_label_sigma < 0 or (cfg.train.loc_label_sigma > 0 and d.box_format != "bins"):
        problems.append(f"train.loc_label_sigma={cfg.train.loc_label_sigma} needs to be >= 0, and > 0 only with "
                        "data.box_format=bins (the other formats have no location tokens); set it to 0")
    if d.max_length <= 0:
        problems.append("data.max_length must be positive")
    if t.per_device_batch_size <= 0 or t.grad_accum <= 0:
        problems.append("train.per_device_batch_size and train.grad_accum must be positive")
    if t.max_seconds < 0:
        problems.append("train.max_seconds must be >= 0 (0 = no wall-clock budget)")
    if t.max_seconds > 0 and t.scheduler not in ("cosine", "linear", "constant"):
        problems.append(f"train.max_seconds needs train.scheduler cosine, linear or constant, not {t.scheduler!r}")
    if t.max_steps <= 0 and t.epochs <= 0:
        problems.append("set train.epochs > 0 or train.max_steps > 0")
    if t.nonfinite_loss not in ("stop", "skip"):
        problems.append("train.nonfinite_loss must be 'stop' or 'skip'")
    if t.deepspeed and not Path(t.deepspeed).is_file():
        problems.append(f"train.deepspeed={t.deepspeed!r} is not a file")
    problems += mask_problems(cfg.mask)
    if problems:
        raise ConfigError("invalid recipe:\n  - " + "\n  - ".join(problems))


def base_has_loc_tokens(base: str) -> bool:
    """Whether a local base's saved tokenizer has the bins format's location tokens (read as text, no load)."""
    folder = Path(base)
    for name in ("tokenizer.json", "added_tokens.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and LOC_TOKENS[0] in path.read_text(encoding="utf-8", errors="replace"):
            return True
    return False


def precision_problems(precision: str) -> list[str]:
    """Precisions this machine cannot train in (checked here so the run fails before loading anything)."""
    import torch

    if precision == "fp16" and not torch.cuda.is_available():
        return ["model.precision=fp16 needs a CUDA GPU (fp16 mixed precision has no CPU path); use auto or fp32"]
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return ["model.precision=bf16: this GPU has no bf16 support (pre-Ampere); use fp16 or auto"]
    return []


def mask_problems(mask: MaskSection) -> list[str]:
    problems = []
    if mask.backend not in ("light", "sam"):
        problems.append("mask.backend must be 'light' or 'sam'")
    if mask.enabled and mask.backend == "sam" and not Path(mask.sam_path).is_dir():
        problems.append(f"mask.backend=sam needs mask.sam_path to be a local SamModel directory, got {mask.sam_path!r}")
    unknown = sorted(set(mask.stages) - set(TASKS))
    if unknown:
        problems.append(f"mask.stages has unknown stages {unknown}; known: {list(TASKS)}")
    if mask.pixel_skip < 0 or (mask.pixel_skip and mask.backend == "sam"):
        problems.append(f"mask.pixel_skip={mask.pixel_skip}: a channel count >= 0, and only for mask.backend=light "
                        "(the SAM backend reads the pixels itself): set mask.pixel_skip=0")
    if min(mask.bce_weight, mask.dice_weight, mask.mecl_weight) < 0 or mask.dim <= 0 or mask.upsample < 0:
        problems.append("mask weights must be >= 0, mask.dim > 0 and mask.upsample >= 0")
    return problems


def prompt_problems(version: str, tasks: list[str]) -> list[str]:
    """Extra tasks the recipe trains whose prompt file the prompt version lacks."""
    from pancapchain.data.prompts import missing_task_prompts

    missing = missing_task_prompts(version, tasks)
    if not missing:
        return []
    files = ", ".join(f"prompts/{version}/{t}.yaml" for t in missing)
    return [f"data.stages trains {missing} but prompt version {version!r} has no {files}: add it or set weight 0"]


def active_stages(cfg: RecipeConfig) -> list[str]:
    """Tasks with a positive weight: chain stages in chain order, then the extra tasks (TASKS order)."""
    return [s for s in TASKS if cfg.data.stages.get(s, 0.0) > 0]


def save_recipe(cfg: RecipeConfig, path: str | Path) -> None:
    from pancapchain.data.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def describe_recipe(cfg: RecipeConfig) -> str:
    """The recipe as YAML (values in JSON syntax), each key preceded by its documentation as a comment."""
    return "\n".join(_describe(cfg, 0)) + "\n"


def _describe(section: Any, depth: int) -> list[str]:
    pad, lines = "  " * depth, []
    for f in fields(section):
        value = getattr(section, f.name)
        lines.append(f"{pad}# {f.metadata['doc']}")
        if is_dataclass(value):
            lines += [f"{pad}{f.name}:", *_describe(value, depth + 1)]
        else:
            lines.append(f"{pad}{f.name}: {_yaml_value(value)}")
    return lines


def _yaml_value(value: Any) -> str:
    """JSON syntax (valid YAML); a float keeps a decimal point, which YAML 1.1 needs to read 2e-05 as a number."""
    import json

    if isinstance(value, float) and "e" in repr(value) and "." not in repr(value):
        return repr(value).replace("e", ".0e")
    return json.dumps(value)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The training command line, shared by ``train.py`` and ``pancapchain train``."""
    parser.add_argument("--recipe", required=True, help="recipe YAML (see recipes/)")
    parser.add_argument("--print-recipe", action="store_true",
                        help="print the merged, validated recipe with each key's documentation, then exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
