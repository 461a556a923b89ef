"""``pancapchain plan-memory``: will a LoRA/QLoRA run of a LLaVA model fit on these GPUs? (per-GPU estimate)

    pancapchain plan-memory --model 13b --gpus 8 --gpu-mem 40 --zero 2 --lora-r 128 [--qlora] [--seq-len 2048]
        [--grad-ckpt] [--batch-size 4] [--lora-dropout 0.05] [--json plan.json]

``--model`` is ``7b``, ``13b`` (LLaVA-1.5 shapes) or a local llava-hf ``config.json`` / model directory.
The model and its assumptions are documented in ``pancapchain/train/memory.py`` and docs/scaling.md.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pancapchain.train.memory import (
    FIT_FRACTION,
    GIB,
    MemoryPlan,
    PlanSettings,
    alternatives,
    load_shape,
    plan_memory,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan-memory", help="per-GPU memory estimate for LoRA/QLoRA under ZeRO-2/3")
    parser.add_argument("--model", required=True, help="7b, 13b, or a llava-hf config.json / model directory")
    parser.add_argument("--gpus", type=int, required=True, help="data-parallel GPUs in total (all nodes)")
    parser.add_argument("--gpu-mem", type=float, required=True, help="memory per GPU in GiB (e.g. 40, 80)")
    parser.add_argument("--zero", type=int, choices=(2, 3), required=True, help="DeepSpeed ZeRO stage")
    parser.add_argument("--lora-r", type=int, required=True, help="LoRA rank (all language-model linears)")
    parser.add_argument("--qlora", action="store_true", help="4-bit NF4 language-model linears")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sample incl. image tokens")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing per decoder layer")
    parser.add_argument("--batch-size", type=int, default=4, help="per-device micro-batch (default 4)")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="> 0 stores dropped inputs (default 0.05)")
    parser.add_argument("--json", default="", help="also write the plan as JSON to this file")
    parser.set_defaults(func=_run)


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f}"


def format_plan(plan: MemoryPlan) -> str:
    s, p, sh = plan.settings, plan.params, plan.shape
    sharding = "sharded" if s.zero == 3 else "replicated"
    weight_kind = "4-bit NF4 LLM linears + bf16 rest" if s.qlora else "bf16"
    tokens = f"{s.batch_size} x {s.seq_len} tokens ({sh.image_tokens} image tokens each)"
    lines = [
        f"model: {sh.name}: LLM {(p.llm_linear + p.llm_other) / 1e9:.2f}B + vision {p.vision / 1e9:.2f}B "
        f"+ projector {p.projector / 1e6:.1f}M params",
        f"settings: {s.gpus} GPU(s) x {s.gpu_mem_gib:g} GiB, ZeRO-{s.zero}, {'QLoRA' if s.qlora else 'LoRA'} "
        f"r={s.lora_r} ({p.lora / 1e6:.1f}M) + projector trainable, bf16 AdamW, per-device batch {s.batch_size}, "
        f"seq-len {s.seq_len}, gradient checkpointing {'on' if s.grad_ckpt else 'off'}, "
        f"LoRA dropout {'on' if s.lora_dropout else 'off'}",
        "per-GPU estimate (GiB):",
        f"  frozen weights     {_gib(plan.weights)}  ({weight_kind}, {sharding} under ZeRO-{s.zero})",
        f"  trainable state    {_gib(plan.trainable_state)}  ({p.trainable / 1e6:.1f}M params: bf16 weights + "
        f"grads, fp32 master, Adam m/v over {s.gpus} GPU(s))",
        f"  activations        {_gib(plan.activations)}  ({tokens})",
        f"  logits             {_gib(plan.logits)}  (bf16 + fp32 upcast + fp32 log-softmax, vocab {sh.vocab})",
        f"  buffers + context  {_gib(plan.buffers)}  (DeepSpeed buckets, CUDA context"
        f"{', dequantized weight' if s.qlora else ''})",
        f"  total              {_gib(plan.total)}  of {s.gpu_mem_gib:g} GiB "
        f"({FIT_FRACTION * s.gpu_mem_gib:.1f} usable at {FIT_FRACTION:.0%})",
        f"verdict: {plan.verdict}",
    ]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def format_alternatives(rows: list[tuple[PlanSettings, int]]) -> str:
    lines = ["which settings fit (largest per-device batch that FITS, same GPUs / seq-len / rank):",
             "  ZeRO  weights  grad-ckpt  max batch"]
    for option, batch in rows:
        verdict = "unsupported" if batch < 0 else ("does not fit" if batch == 0 else str(batch))
        lines.append(f"  {option.zero:>4}  {'4-bit' if option.qlora else 'bf16':>7}  "
                     f"{'on' if option.grad_ckpt else 'off':>9}  {verdict}")
    return "\n".join(lines)


def plan_to_dict(plan: MemoryPlan, rows: list[tuple[PlanSettings, int]]) -> dict:
    gib = {k: round(getattr(plan, k) / GIB, 3)
           for k in ("weights", "trainable_state", "activations", "logits", "buffers", "total")}
    return {
        "model": asdict(plan.shape),
        "settings": asdict(plan.settings),
        "params": {**asdict(plan.params), "frozen": plan.params.frozen, "trainable": plan.params.trainable},
        "per_gpu_gib": gib,
        "verdict": plan.verdict,
        "notes": plan.notes,
        "alternatives": [{**asdict(opt), "max_batch_that_fits": batch} for opt, batch in rows],
    }


def _preflight(args: argparse.Namespace) -> None:
    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError

    for flag, value in (("--gpus", args.gpus), ("--lora-r", args.lora_r), ("--seq-len", args.seq_len),
                        ("--batch-size", args.batch_size)):
        preflight.at_least(value, 1, flag)
    if not args.gpu_mem > 0:  # also refuses NaN
        raise PreflightError(f"--gpu-mem {args.gpu_mem}: must be > 0 (GiB per GPU)")
    preflight.in_range(args.lora_dropout, 0.0, 1.0, "--lora-dropout")
    if args.json:
        preflight.output_file(args.json, "--json")


def _shape(model: str):
    from pancapchain.errors import UserError

    try:
        return load_shape(model)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSON that is not a llava-hf config
        raise UserError(f"--model {model}: not a llava-hf config.json ({type(err).__name__}: {err})") from None


def _run(args: argparse.Namespace) -> int:
    from pancapchain.data.io import atomic_write_json

    _preflight(args)
    shape = _shape(args.model)
    settings = PlanSettings(
        gpus=args.gpus,
        gpu_mem_gib=args.gpu_mem,
        zero=args.zero,
        lora_r=args.lora_r,
        qlora=args.qlora,
        seq_len=args.seq_len,
        grad_ckpt=args.grad_ckpt,
        batch_size=args.batch_size,
        lora_dropout=args.lora_dropout > 0,
    )
    plan = plan_memory(shape, settings)
    rows = alternatives(shape, settings)
    print(format_plan(plan))
    print(format_alternatives(rows))
    if args.json:
        atomic_write_json(args.json, plan_to_dict(plan, rows))
    return 0
