"""``pancapchain synth``: write the synthetic panoptic captioning dataset (images + train/val JSONL)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic panoptic dataset (exact masks, boxes, relations, captions)",
        description="Draw procedural panoptic scenes and write DIR/images/*.png, DIR/train.jsonl, "
        "DIR/val.jsonl and DIR/synth_config.json. Same arguments -> byte-identical JSONL and PNGs.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--n-train", type=int, default=1000, help="training scenes (default 1000)")
    parser.add_argument("--n-val", type=int, default=100, help="validation scenes (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="base seed, >= 0 (default 0)")
    parser.add_argument("--size", type=int, default=64, help="image width in pixels, >= 32 (default 64)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pancapchain.cli import preflight
    from pancapchain.data.synth import MIN_SIZE, write_dataset

    preflight.output_dir(args.out, "--out")
    for flag, value, low in (("--n-train", args.n_train, 0), ("--n-val", args.n_val, 0), ("--seed", args.seed, 0),
                             ("--size", args.size, MIN_SIZE)):
        preflight.at_least(value, low, flag)
    result = write_dataset(args.out, args.n_train, args.n_val, args.seed, args.size, not args.no_progress)
    stats = result["stats"]
    print(
        f"wrote {stats['train']['scenes']} train + {stats['val']['scenes']} val scenes to {args.out} "
        f"in {result['seconds']:.1f} s (config: {result['paths']['config']})"
    )
    return 0
