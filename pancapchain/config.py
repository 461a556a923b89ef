"""Typed recipe configuration: YAML + ``key=value`` overrides -> validated ``RecipeConfig``.

Sections map 1:1 to dataclasses. OmegaConf's structured merge rejects unknown keys and wrong types;
``validate`` then collects every cross-field problem and raises once with what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pancapchain.constants import BOX_FORMATS, EXTRA_TASKS, LOC_TOKENS, STAGES, TASKS
from pancapchain.model.tiny import TinyModelConfig

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")
QUANT_CHOICES = ("none", "4bit")


class ConfigError(ValueError):
    """A recipe that cannot run; the message lists every problem and how to fix it."""


@dataclass
class ModelSection:
    base: str = "tiny"  # "tiny" (built from configs) or a local llava-hf checkpoint directory
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    attn_implementation: str = "auto"  # auto: flash_attention_2 when importable on CUDA, else sdpa
    precision: str = "auto"  # auto: bf16 where supported, else fp16 on CUDA, fp32 on CPU
    quantization: str = "none"  # "4bit": QLoRA (language model linear layers only)
    freeze_vision_tower: bool = True
    train_projector: bool = True
    # Full fine-tuning of the language model (embeddings and head included) instead of LoRA: the tiny recipes'
    # choice, since a randomly initialised base cannot learn the task through low-rank updates.
    train_language_model: bool = False
    gradient_checkpointing: bool = False


@dataclass
class LoraSection:
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # Leaf names of the language model's linear layers; "all-linear" finds them all (LLaVA's choice).
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # Extra modules trained in full and saved with the adapter (peft modules_to_save), e.g. the tiny recipe's
    # randomly initialised [embed_tokens, lm_head]: LoRA alone cannot fix random embeddings.
    modules_to_save: list[str] = field(default_factory=list)


@dataclass
class DataSection:
    train: str = ""  # JSONL of panoptic samples
    val: str = ""  # optional JSONL for eval loss
    image_root: str = ""  # default: the directory of each JSONL file
    box_format: str = "asmv2"
    prompt_version: str = "v1"
    # Task -> loss weight; weight 0 = not trained (keys merge with these defaults, so set 0 to drop one).
    # Keys: the four chain stages (default 1) and the extra box tasks segcap/region (default 0, see TASKS).
    stages: dict[str, float] = field(default_factory=lambda: {t: float(t in STAGES) for t in TASKS})
    discover_ratio: list[float] = field(default_factory=lambda: [0.3, 0.7])
    # Order of the items in stage 1-3 answers: caption (entity order, the paper's data) or raster (reading
    # order: top band, then left to right), which a small model learns much faster.
    item_order: str = "caption"
    max_length: int = 2048
    strict: bool = False  # fail on the first bad record instead of skipping and reporting it
    max_val_samples: int = 0  # 0 = all


@dataclass
class TrainSection:
    output_dir: str = "runs/tiny"
    epochs: float = 1.0
    max_steps: int = -1
    # Wall-clock budget in seconds of optimizer steps (0 = off): training stops when it is spent and the LR
    # schedule (warmup, then cosine/linear decay) runs on elapsed time; epochs then only bound the data passes.
    max_seconds: float = 0.0
    per_device_batch_size: int = 4
    eval_batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    projector_lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_steps: int = 0  # 0 = evaluate at start and end only
    save_steps: int = 0  # 0 = save at the end of each epoch
    save_total_limit: int = 3
    seed: int = 42
    group_by_length: bool = True
    dataloader_workers: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    resume: str = "auto"  # auto (latest checkpoint in output_dir if any) | never | a checkpoint path
    deepspeed: str = ""  # DeepSpeed JSON ("auto" values filled by the Trainer); or use an accelerate config
    nonfinite_loss: str = "stop"  # stop | skip


@dataclass
class MaskSection:
    """SGDiff-style mask head trained jointly (see docs/mask_head.md)."""

    enabled: bool = False
    backend: str = "light"  # light (MaskFormer-style, no extra weights) | sam (needs sam_path)
    sam_path: str = ""  # local SamModel checkpoint directory for backend=sam
    dim: int = 64  # mask embedding width (256 for real models)
    upsample: int = 2  # x2 stages of the pixel decoder: mask side = patch grid * 2**upsample
    box_prior: bool = True  # light head: the entity's box (from the text) as a learned +-1 prior on the logits
    # Tasks whose answers' box groups are supervised with the entity masks (tasks not trained add nothing).
    stages: list[str] = field(default_factory=lambda: list(TASKS))
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    mecl_weight: float = 0.1  # 0 turns MECL (and the word projection) off
    tau: float = 0.07
    tau_g: float = 0.1


@dataclass
class RecipeConfig:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    mask: MaskSection = field(default_factory=MaskSection)

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
    lo_r, hi_r = (d.discover_ratio + [0, 0])[:2]
    if len(d.discover_ratio) != 2 or not 0.0 <= lo_r <= hi_r <= 1.0:
        problems.append("data.discover_ratio must be [low, high] with 0 <= low <= high <= 1")
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
