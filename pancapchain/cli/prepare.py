"""``pancapchain prepare SOURCE``: import an external dataset into panoptic sample JSONL.

Sources (one sub-command each): ``sapancap`` (SA-Pancap caption JSON + SA-1B images). Each writes
``OUT/samples.jsonl`` and ``OUT/import_report.json`` (counts, skips, and the command's config).

SAM tools (a local SAM checkpoint folder; see :mod:`pancapchain.mask.sam_tools`):
``sam-masks`` fills missing entity masks from box prompts (JSONL in, JSONL out, ``OUT.report.json``);
``sam-candidates`` writes "segment everything" candidate masks for ``ground --candidates`` (SMR).
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
    _register_sam_masks(sources)
    _register_sam_candidates(sources)


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
    from pancapchain.cli import preflight
    from pancapchain.data.io import atomic_write_json, save_samples
    from pancapchain.data.sapancap import caption_statistics, import_sapancap
    from pancapchain.data.schema import SampleError

    if not args.stats_only and (args.image_root is None or args.out is None):
        print("pancapchain prepare sapancap: error: --image-root and --out are required", file=sys.stderr)
        return 2
    preflight.existing_file(args.captions, "--captions")
    if args.image_root is not None:
        preflight.existing_dir(args.image_root, "--image-root")
    if args.out is not None:
        preflight.output_dir(args.out, "--out")
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


def _add_sam_dataset_args(parser: argparse.ArgumentParser, out_help: str) -> None:
    """--data/--sam/--out/--image-root, shared by the two SAM sub-commands."""
    parser.add_argument("--data", type=Path, required=True, help="panoptic sample JSONL")
    parser.add_argument("--sam", type=Path, required=True, help="local SAM checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--image-root", type=Path, help="image root (default: the directory of --data)")


def _register_sam_masks(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "sam-masks",
        help="fill missing entity masks from SAM box prompts",
        description="Give every entity without a mask the SAM mask of its box (existing masks are kept "
        "unless --overwrite). Samples whose image is unreadable are written unchanged and reported.",
    )
    _add_sam_dataset_args(parser, "output JSONL (report: OUT.report.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing masks too")
    parser.set_defaults(func=run_sam_masks)


def _register_sam_candidates(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "sam-candidates",
        help="SAM automatic-mask candidates per image, for SMR refinement (ground --candidates)",
        description="Run SAM on a grid of point prompts over every sample's image and write the kept "
        "masks as a candidate file (pancapchain-sam-candidates/1). Unreadable images are reported.",
    )
    _add_sam_dataset_args(parser, "candidate JSON (report: OUT.report.json)")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.5)
    parser.add_argument("--max-masks", type=int, default=64)
    parser.set_defaults(func=run_sam_candidates)


def _sam_inputs(args: argparse.Namespace, command: str):
    """(samples, load report, SamRunner) or an exit code after printing the error."""
    from pancapchain.cli import preflight
    from pancapchain.data.io import load_samples
    from pancapchain.mask.sam_head import MaskHeadError
    from pancapchain.mask.sam_tools import SamRunner

    preflight.existing_file(args.data, "--data")
    preflight.existing_dir(args.sam, "--sam")
    if args.image_root is not None:
        preflight.existing_dir(args.image_root, "--image-root")
    preflight.output_file(args.out, "--out")
    try:
        samples, loaded = load_samples(args.data)
        runner = SamRunner(args.sam)
    except (OSError, MaskHeadError) as err:
        print(f"pancapchain prepare {command}: error: {err}", file=sys.stderr)
        return 1
    return samples, loaded, runner


def _write_report(out: Path, command: str, args: argparse.Namespace, body: dict) -> Path:
    from pancapchain.data.io import atomic_write_json

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    config["command"] = f"prepare {command}"
    path = out.with_name(out.name + ".report.json")
    atomic_write_json(path, {"config": config, **body})
    return path


def run_sam_masks(args: argparse.Namespace) -> int:
    from pancapchain.data.io import save_samples
    from pancapchain.mask.sam_tools import fill_sam_masks

    inputs = _sam_inputs(args, "sam-masks")
    if isinstance(inputs, int):
        return inputs
    samples, loaded, runner = inputs
    root = args.image_root or args.data.parent
    filled, counts, report = fill_sam_masks(samples, root, runner, overwrite=args.overwrite)
    save_samples(args.out, filled)
    report_path = _write_report(
        args.out, "sam-masks", args, {**counts, "samples": len(filled), "load": loaded.to_dict(), **report.to_dict()}
    )
    print(loaded.summary())
    print(report.summary())
    print(
        f"masks filled {counts['masks_filled']}, existing kept {counts['masks_kept']}, samples written "
        f"{len(filled)} ({counts['samples_changed']} changed) -> {args.out} (report {report_path})"
    )
    return 0


def run_sam_candidates(args: argparse.Namespace) -> int:
    from pancapchain.mask.refine import save_candidates
    from pancapchain.mask.sam_tools import dataset_candidates

    inputs = _sam_inputs(args, "sam-candidates")
    if isinstance(inputs, int):
        return inputs
    samples, loaded, runner = inputs
    settings = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "max_masks": args.max_masks,
    }
    candidates, report = dataset_candidates(samples, args.image_root or args.data.parent, runner, **settings)
    source = f"SAM {args.sam} automatic masks " + " ".join(f"{k}={v}" for k, v in settings.items())
    save_candidates(args.out, candidates, source=source)
    n_masks = sum(len(v) for v in candidates.values())
    report_path = _write_report(
        args.out, "sam-candidates", args, {"masks": n_masks, "load": loaded.to_dict(), **report.to_dict()}
    )
    print(loaded.summary())
    print(report.summary())
    print(f"{n_masks} candidate masks for {len(candidates)} images -> {args.out} (report {report_path})")
    return 0
