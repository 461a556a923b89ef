"""``pancapchain convert-llava --src DIR --out DIR``: original LLaVA layout (ASMv2, llava-v1.5) -> llava-hf."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert-llava",
        help="convert an original-format LLaVA checkpoint (ASMv2, llava-v1.5) to the llava-hf layout",
        description="Convert an original-format LLaVA checkpoint to the llava-hf layout (see docs/export.md).",
    )
    parser.add_argument("--src", required=True, help="original checkpoint folder (LlavaLlamaForCausalLM)")
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
    parser.add_argument(
        "--vision-tower",
        default=None,
        help="local CLIP folder (e.g. a copy of openai/clip-vit-large-patch14-336) when the checkpoint "
        "does not store the vision tower weights",
    )
    parser.add_argument(
        "--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="weights dtype (default: the source's)"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.cli import preflight
    from pancapchain.model.convert_llava import convert_llava

    preflight.existing_dir(args.src, "--src")
    preflight.output_dir(args.out, "--out")
    if args.vision_tower:
        preflight.existing_dir(args.vision_tower, "--vision-tower")
    convert_llava(args.src, args.out, args.vision_tower, args.dtype, args.force)
    return 0
