"""``pancapchain prepare SOURCE``: import an external dataset into panoptic sample JSONL.

Sources (one sub-command each): ``sapancap`` (SA-Pancap caption JSON + SA-1B images). Each writes
``OUT/samples.jsonl`` and ``OUT/import_report.json`` (counts, skips, and the command's config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="import an external dataset (sapancap, ...) into panoptic sample JSONL",
        description="Import an external dataset into panoptic sample JSONL (one sub-command per source).",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    _register_sapancap(sources)


def _register_sapancap(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "sapancap",
        help="SA-Pancap captions ([{image_path, gt_response}]) + images",
        description="Parse SA-Pancap captions (inline [[x1, y1, x2, y2]] boxes) into samples with one "
        "entity per distinct box, reading image sizes from the image headers. Missing images and paths "
        "escaping the image root are skipped and reported (--strict: stop at the first one).",
    )
    parser.add_argument("--captions", type=Path, required=True, help="caption JSON file")
    parser.add_argument("--image-root", type=Path, help="directory the image_path values are relative to")
    parser.add_argument("--out", type=Path, help="output directory (samples.jsonl, import_report.json)")
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first bad record instead of skipping"
    )
    parser.add_argument(
        "--stats-only",
        action="store_true",
        help="only parse the captions and print box/tag statistics (no images needed; --out optional)",
    )
    parser.set_defaults(func=run_sapancap)


def run_sapancap(args: argparse.Namespace) -> int:
    from pancapchain.data.io import atomic_write_json, save_samples
    from pancapchain.data.sapancap import caption_statistics, import_sapancap
    from pancapchain.data.schema import SampleError

    if not args.stats_only and (args.image_root is None or args.out is None):
        print("pancapchain prepare sapancap: error: --image-root and --out are required", file=sys.stderr)
        return 2
    try:
        if args.stats_only:
            samples, report = [], caption_statistics(args.captions)
        else:
            samples, report = import_sapancap(args.captions, args.image_root, strict=args.strict)
    except SampleError as err:
        print(f"pancapchain prepare sapancap: error: {err}", file=sys.stderr)
        return 1
    if args.out is not None:
        if not args.stats_only:
            save_samples(args.out / "samples.jsonl", samples)
        config = {
            "command": "prepare sapancap",
            "captions": str(args.captions),
            "image_root": None if args.image_root is None else str(args.image_root),
            "strict": args.strict,
            "stats_only": args.stats_only,
        }
        atomic_write_json(args.out / "import_report.json", {"config": config, **report.to_dict()})
    print(report.summary())
    if args.out is not None:
        written = "import_report.json" if args.stats_only else "samples.jsonl and import_report.json"
        print(f"wrote {written} to {args.out}")
    return 0
