"""``pancapchain export --checkpoint DIR --out DIR [--dtype bf16|fp16|fp32]``: merged llava-hf folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="merge a training checkpoint (LoRA + projector) into a folder plain transformers loads",
        description="Merge a training checkpoint into a standalone llava-hf folder (see docs/export.md).",
    )
    parser.add_argument("--checkpoint", required=True, help="training checkpoint folder (out/ or out/checkpoint-N)")
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="weights dtype (default bf16)")
    parser.add_argument("--base", default=None, help="base model folder, if it moved since training")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError

    preflight.model_dir(args.checkpoint, "--checkpoint")
    preflight.output_dir(args.out, "--out")
    if args.base:
        preflight.existing_dir(args.base, "--base")
    from pancapchain.model.export import export_checkpoint  # heavy (torch): only after the checks
    try:
        export_checkpoint(args.checkpoint, args.out, args.dtype, args.force, args.base)
    except SafetensorError as err:
        raise PreflightError(f"--checkpoint {args.checkpoint}: unreadable weights ({err})") from None
    return 0
