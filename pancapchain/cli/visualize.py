"""``pancapchain visualize --pred preds.jsonl --images ROOT --out DIR``: PNG overlays and an index.html."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("visualize", help="draw predictions (boxes, tags, masks, caption) + index.html")
    parser.add_argument("--pred", required=True, help="predictions JSONL (from `pancapchain infer`)")
    parser.add_argument("--images", required=True, help="image root the predictions' image paths are relative to")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--limit", type=int, default=0, help="only the first N predictions")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.cli import preflight

    preflight.existing_file(args.pred, "--pred")
    preflight.existing_dir(args.images, "--images")
    preflight.output_dir(args.out, "--out")
    preflight.at_least(args.limit, 0, "--limit")
    from pancapchain.infer.visualize import visualize  # heavy (torch): only after the checks

    report = visualize(args.pred, args.images, args.out, args.limit)
    print(report.summary())
    print(f"open {args.out}/index.html")
    return 0
