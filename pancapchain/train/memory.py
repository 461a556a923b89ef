"""Per-GPU memory planner for LoRA/QLoRA fine-tuning of LLaVA-style models under DeepSpeed ZeRO-2/3.

All figures are bytes per GPU (reported in GiB = 2**30 bytes), for bf16 training with AdamW:
- weights: the frozen base in bf16 (2 B/param; 4-bit NF4 + double-quant constants for QLoRA's language-model
  linears), replicated under ZeRO-2, sharded 1/N under ZeRO-3 (plus the gathered working set of the largest
  module, DeepSpeed's ``4 * largest_layer_params``);
- trainable state (LoRA + projector): DeepSpeed's own convention, 2 B bf16 weights (replicated under ZeRO-2)
  + 18 B/param sharded 1/N (bf16 + fp32 grads, fp32 master weights, Adam m and v). With every parameter
  trainable this reduces exactly to ``estimate_zero2/3_model_states_mem_needs`` (tests check it);
- activations per micro-batch: with gradient checkpointing, one hidden state per decoder layer per token plus
  one layer recomputed during backward; without it, every layer's saved tensors (counted per op for a
  Llama block with SDPA attention, LoRA ``A`` outputs and LoRA-dropout copies); logits as bf16 + the fp32
  upcast and fp32 log-softmax of our loss; projector activations;
- buffers: DeepSpeed communication buckets ("auto" sizes as the Trainer fills them), the dequantized weight
  of the largest 4-bit linear (QLoRA), and a fixed 1 GiB for the CUDA context and allocator.

A plan "fits" below 90% of the GPU memory (allocator fragmentation), is "tight" up to 100%, else does not fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

GIB = 1024**3
BF16 = 2
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax/64 + fp32 absmax per 256 blocks
CUDA_CONTEXT_GIB = 1.0
FIT_FRACTION = 0.9
ALLGATHER_BUCKET = 2e8  # recipes/deepspeed/zero2.json allgather_bucket_size


@dataclass(frozen=True)
class LlavaShape:
    """Dimensions of a LLaVA model: Llama-style language model + CLIP-style vision tower + 2-layer projector."""

    name: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool
    vision_layers: int
    vision_hidden: int
    vision_ffn: int
    image_size: int
    patch_size: int

    @property
    def image_tokens(self) -> int:
        """Image placeholder tokens per image (patches; the CLS token is dropped, "default" strategy)."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_config_dict(cls, config: dict, name: str) -> LlavaShape:
        """From a llava-hf ``config.json`` (missing keys take transformers' LlavaConfig defaults)."""
        from transformers import LlavaConfig

        cfg = LlavaConfig.from_dict(config)
        text, vision = cfg.text_config, cfg.vision_config
        heads = text.num_attention_heads
        return cls(
            name=name,
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            ffn=text.intermediate_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            tie_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
            vision_layers=vision.num_hidden_layers,
            vision_hidden=vision.hidden_size,
            vision_ffn=vision.intermediate_size,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
        )


def _llava15(name: str, layers: int, hidden: int, ffn: int, heads: int) -> LlavaShape:
    """LLaVA-1.5 (llava-hf): Vicuna-1.5 / LLaMA-2 without GQA, vocab 32064, CLIP ViT-L/14 at 336 px."""
    return LlavaShape(name, layers, hidden, ffn, heads, heads, hidden // heads, 32064, False, 24, 1024, 4096, 336, 14)


BUILTIN_SHAPES = {
    "7b": _llava15("llava-1.5-7b", 32, 4096, 11008, 32),
    "13b": _llava15("llava-1.5-13b", 40, 5120, 13824, 40),
}


def load_shape(model: str) -> LlavaShape:
    """``7b`` / ``13b`` or a local llava-hf ``config.json`` (or the directory holding it)."""
    if model.lower() in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[model.lower()]
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--model {model!r}: not one of {sorted(BUILTIN_SHAPES)} and no config.json there")
    return LlavaShape.from_config_dict(json.loads(path.read_text()), name=str(path.parent))


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by role. ``largest_module``: most parameters held directly by one module."""

    llm_linear: int  # the layers LoRA adapts and QLoRA quantizes
    llm_other: int  # embeddings, norms (and lm_head)
    vision: int
    projector: int
    lora: int
    largest_module: int

    @property
    def frozen(self) -> int:
        """The base: LLM + vision tower + the projector's original copy (peft keeps it beside the trained one)."""
        return self.llm_linear + self.llm_other + self.vision + self.projector

    @property
    def trainable(self) -> int:
        return self.lora + self.projector


def _linear_shapes(shape: LlavaShape) -> list[tuple[int, int]]:
    """(in, out) of every linear layer in one decoder layer: q, k, v, o, gate, up, down."""
    d, q_out, kv_out = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return [(d, q_out), (d, kv_out), (d, kv_out), (q_out, d), (d, shape.ffn), (d, shape.ffn), (shape.ffn, d)]


def count_params(shape: LlavaShape, lora_r: int) -> ParamCounts:
    """Exact counts for llava-hf modules (no biases in Llama linears; CLIP and projector linears have biases)."""
    linears = _linear_shapes(shape)
    llm_linear = shape.layers * sum(i * o for i, o in linears)
    embed = shape.vocab * shape.hidden
    llm_other = embed * (1 if shape.tie_embeddings else 2) + (2 * shape.layers + 1) * shape.hidden
    vd, vf = shape.vision_hidden, shape.vision_ffn
    patches = (shape.image_size // shape.patch_size) ** 2
    vision_layer = 4 * (vd * vd + vd) + (vd * vf + vf) + (vf * vd + vd) + 4 * vd
    vision = 3 * shape.patch_size**2 * vd + vd + (patches + 1) * vd + 4 * vd + shape.vision_layers * vision_layer
    projector = vd * shape.hidden + shape.hidden + shape.hidden * shape.hidden + shape.hidden
    lora = shape.layers * sum(lora_r * (i + o) for i, o in linears)
    largest = max(embed, max(i * o for i, o in linears), vd * vf)
    return ParamCounts(llm_linear, llm_other, vision, projector, lora, largest)


@dataclass(frozen=True)
class PlanSettings:
    gpus: int
    gpu_mem_gib: float
    zero: int  # 2 or 3
    lora_r: int
    qlora: bool = False
    seq_len: int = 2048
    grad_ckpt: bool = False
    batch_size: int = 4  # per device
    lora_dropout: bool = True  # dropout > 0 stores a dropped copy of each adapted layer's input


@dataclass
class MemoryPlan:
    shape: LlavaShape
    settings: PlanSettings
    params: ParamCounts
    weights: float  # bytes
    trainable_state: float
    activations: float
    logits: float
    buffers: float
    notes: list[str]

    @property
    def total(self) -> float:
        return self.weights + self.trainable_state + self.activations + self.logits + self.buffers

    @property
    def supported(self) -> bool:
        return not (self.settings.qlora and self.settings.zero >= 3)

    @property
    def verdict(self) -> str:
        if not self.supported:
            return "UNSUPPORTED"
        capacity = self.settings.gpu_mem_gib * GIB
        if self.total <= FIT_FRACTION * capacity:
            return "FITS"
        return "TIGHT" if self.total <= capacity else "DOES NOT FIT"


def model_states_bytes(frozen: float, trainable: int, largest_module: int, zero: int, gpus: int) -> float:
    """Weights + gradients + optimizer states per GPU (DeepSpeed's conventions, no offload).

    ``frozen`` is in bytes (its dtype differs between LoRA and QLoRA); ``trainable`` and ``largest_module`` are
    parameter counts. With ``frozen=0`` this equals DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs``.
    """
    if zero == 3:
        return frozen / gpus + 4 * largest_module + 18 * trainable / gpus
    return frozen + 2 * trainable + 18 * trainable / gpus


def frozen_weight_bytes(params: ParamCounts, qlora: bool) -> float:
    linear_bytes = NF4_BYTES_PER_PARAM if qlora else BF16
    return params.llm_linear * linear_bytes + (params.llm_other + params.vision + params.projector) * BF16


def layer_activation_bytes(shape: LlavaShape, lora_r: int, lora_dropout: bool) -> float:
    """Bytes one decoder layer saves for backward, per token (bf16, SDPA attention, LoRA on all 7 linears).

    Attention: norm input + output, rotated q, k, v, attention output and its contiguous copy for o_proj.
    MLP: norm input + output, gate, up, silu(gate), their product. LoRA: each ``A`` output (r values) and,
    with dropout, a dropped copy of each adapted input (bf16) plus its mask (1 byte).
    """
    d, q_out, kv_out, f = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    attention = d + d + q_out + 2 * kv_out + 2 * q_out
    mlp = 2 * d + 4 * f
    lora = 7 * lora_r
    dropout_inputs = sum(i for i, _ in _linear_shapes(shape)) if lora_dropout else 0
    return (attention + mlp + lora + dropout_inputs) * BF16 + dropout_inputs * 1


def activation_bytes(shape: LlavaShape, s: PlanSettings) -> float:
    """Saved activations for one micro-batch of ``batch_size`` sequences of ``seq_len`` tokens (one image each)."""
    tokens = s.batch_size * s.seq_len
    per_layer = layer_activation_bytes(shape, s.lora_r, s.lora_dropout)
    if s.grad_ckpt:
        # layer inputs kept for every layer; one layer recomputed in backward, plus its input gradient
        stored = tokens * (shape.layers * shape.hidden * BF16 + per_layer + 2 * shape.hidden * BF16)
    else:
        stored = tokens * shape.layers * per_layer
    projector = s.batch_size * shape.image_tokens * (shape.vision_hidden + 2 * shape.hidden) * BF16
    vision_layer = s.batch_size * (shape.image_tokens + 1) * (5 * shape.vision_hidden + 2 * shape.vision_ffn) * BF16
    return stored + projector + vision_layer


def logits_bytes(shape: LlavaShape, s: PlanSettings) -> float:
    """Logits at the loss: bf16 logits + fp32 upcast + fp32 log-softmax saved for backward."""
    return s.batch_size * s.seq_len * shape.vocab * (BF16 + 4 + 4)


def buffer_bytes(shape: LlavaShape, params: ParamCounts, s: PlanSettings) -> float:
    """DeepSpeed buckets ("auto" = hidden^2 elements), QLoRA's dequantized weight, CUDA context."""
    buckets = 2 * shape.hidden**2 * BF16  # reduce bucket, double-buffered with overlap_comm
    if s.zero == 3:
        buckets += 0.9 * shape.hidden**2 * BF16  # stage3_prefetch_bucket_size
    else:
        buckets += min(ALLGATHER_BUCKET, params.trainable) * BF16
    dequantized = max(i * o for i, o in _linear_shapes(shape)) * BF16 if s.qlora else 0
    return buckets + dequantized + CUDA_CONTEXT_GIB * GIB


def plan_memory(shape: LlavaShape, s: PlanSettings) -> MemoryPlan:
    """The per-GPU estimate for one configuration."""
    if s.zero not in (2, 3) or s.gpus <= 0 or s.batch_size <= 0 or s.seq_len <= 0 or s.lora_r <= 0:
        raise ValueError(f"invalid settings {s}: zero must be 2 or 3; gpus, batch, seq-len, lora-r positive")
    params = count_params(shape, s.lora_r)
    frozen = frozen_weight_bytes(params, s.qlora)
    states = model_states_bytes(frozen, params.trainable, params.largest_module, s.zero, s.gpus)
    weights = frozen / s.gpus + 4 * params.largest_module if s.zero == 3 else frozen
    notes = []
    if s.seq_len <= shape.image_tokens:
        notes.append(f"seq-len {s.seq_len} leaves no room for text after {shape.image_tokens} image tokens")
    if s.qlora and s.zero >= 3:
        notes.append("QLoRA with ZeRO-3 is refused by this recipe; the 4-bit base fits every GPU, use ZeRO-2")
    if s.gpus == 1:
        notes.append("1 GPU: ZeRO shards nothing; the numbers equal plain data parallel")
    return MemoryPlan(
        shape=shape,
        settings=s,
        params=params,
        weights=weights,
        trainable_state=states - weights,
        activations=activation_bytes(shape, s),
        logits=logits_bytes(shape, s),
        buffers=buffer_bytes(shape, params, s),
        notes=notes,
    )


def max_batch_that_fits(shape: LlavaShape, s: PlanSettings, limit: int = 64) -> int:
    """Largest per-device batch (up to ``limit``) whose plan FITS; 0 when even batch 1 does not."""
    best = 0
    for batch in range(1, limit + 1):
        if plan_memory(shape, replace(s, batch_size=batch)).verdict != "FITS":
            break
        best = batch
    return best


def alternatives(shape: LlavaShape, s: PlanSettings) -> list[tuple[PlanSettings, int]]:
    """Each (ZeRO stage, gradient checkpointing, QLoRA) combination with the largest batch that fits."""
    rows = []
    for zero in (2, 3):
        for qlora in (False, True):
            for grad_ckpt in (True, False):
                option = replace(s, zero=zero, qlora=qlora, grad_ckpt=grad_ckpt)
                supported = plan_memory(shape, option).supported
                rows.append((option, max_batch_that_fits(shape, option) if supported else -1))
    return rows
