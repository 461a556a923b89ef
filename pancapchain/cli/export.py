"""``pancapchain export --checkpoint DIR --out DIR [--dtype bf16|fp16|fp32] [--push-to-hub REPO]``: merged
llava-hf folder with a Hub model card (README.md), optionally uploaded with huggingface_hub."""

from __future__ import annotations

import argparse
import sys


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
    card = parser.add_argument_group("model card (README.md) and the Hub")
    card.add_argument("--base-model-id", default=None,
                      help="Hub id of the base (e.g. llava-hf/llava-1.5-13b-hf) when training used a local copy")
    card.add_argument("--dataset-id", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    card.add_argument("--eval", action="append", default=[], metavar="[NAME=]DIR",
                      help="a `pancapchain eval` output (folder or metrics.json) for the card's results (repeatable; "
                           "default: CHECKPOINT/eval when present)")
    card.add_argument("--license", default=None, help="license id for the card metadata (e.g. llama2, apache-2.0)")
    card.add_argument("--push-to-hub", default=None, metavar="REPO",
                      help="upload the export to this Hub model repo (created if missing; token from HF_TOKEN / hf auth)")
    card.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError

    preflight.model_dir(args.checkpoint, "--checkpoint")
    preflight.output_dir(args.out, "--out")
    if args.base:
        preflight.existing_dir(args.base, "--base")
    from pancapchain.model.checkpoint import CheckpointError  # heavy (torch): only after the checks
    from pancapchain.model.export import ExportError, export_checkpoint
    from pancapchain.model.merge import MergeError
    from pancapchain.model.model_card import CardOptions, ModelCardError
    from pancapchain.model.staging import OutputDirError

    card = CardOptions(args.base_model_id, args.dataset_id, args.eval, args.license)
    try:
        export_checkpoint(args.checkpoint, args.out, args.dtype, args.force, args.base, card=card)
    except SafetensorError as err:
        raise PreflightError(f"--checkpoint {args.checkpoint}: unreadable weights ({err})") from None
    except (ExportError, CheckpointError, MergeError, OutputDirError, ModelCardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return _push(args) if args.push_to_hub else 0


def _push(args: argparse.Namespace) -> int:
    """Upload the finished export; a failure leaves it on disk and says how to retry."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from pancapchain.model.model_card import push_to_hub

    try:
        url = push_to_hub(args.out, args.push_to_hub, private=args.private)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as err:
        print(f"error: the export is in {args.out} but the upload to {args.push_to_hub} failed: "
              f"{type(err).__name__}: {err}; check the token (HF_TOKEN or `hf auth login`) and the network, "
              f"then upload it with `hf upload {args.push_to_hub} {args.out}`", file=sys.stderr)
        return 2
    print(f"uploaded {args.out} to https://huggingface.co/{args.push_to_hub} ({url})")
    return 0
