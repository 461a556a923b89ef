"""``pancapchain eval``: PancapScore (offline or LLM judge), mask and caption metrics of a prediction file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MAX_PRINTED_WARNINGS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score predicted panoptic captions (PancapScore, masks, caption metrics)",
        description="Score PRED (JSONL of {id, caption, masks?}) against GT (SA-Pancap caption JSON or "
        "PanopticSample JSONL). Writes OUT/metrics.json, OUT/per_image.json and OUT/summary.md and prints "
        "the summary. Bad records are counted and scored zero, never fatal.",
    )
    parser.add_argument("--pred", type=Path, required=True, help="predictions JSONL (or JSON array)")
    parser.add_argument("--gt", type=Path, required=True, help="GT: SA-Pancap caption JSON or our JSONL")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--judge", default="offline",
                        help="'offline' (default, no LLM) or 'hf:PATH' (local HF causal LM as judge)")
    parser.add_argument("--embed-model", default=None,
                        help="local sentence-transformers folder for tag similarity (default: the packaged "
                        "all-MiniLM-L6-v2; the official choice is all-mpnet-base-v2; 'hashing' = no model, "
                        "bag-of-words, for smoke tests only)")
    parser.add_argument("--image-root", default=None,
                        help="image folder, to read sizes for SA-Pancap GT (needed for <box> grid predictions)")
    parser.add_argument("--embed-threshold", type=float, default=0.5, help="tag cosine threshold (official 0.5)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="box IoU threshold (official 0.5)")
    parser.add_argument("--support-threshold", type=float, default=0.5,
                        help="offline mode: minimum cosine for an attribute/relation/global item to count")
    parser.add_argument("--no-wordnet", action="store_true", help="synonyms by containment only")
    parser.add_argument("--box-rules", choices=("official", "lenient"), default="official",
                        help="how caption boxes are read: 'official' = the official step 0 (only single "
                        "<box>[[d, d, d, d]]</box> groups are 0-1000 grid), 'lenient' = also multi-box / loosely "
                        "spaced <box> groups and bare integer [[..]] groups (docs/evaluation.md)")
    parser.add_argument("--judge-batch-size", type=int, default=4, help="prompts per generate() call")
    parser.add_argument("--judge-max-new-tokens", type=int, default=2048, help="generation cap per call")
    parser.add_argument("--judge-device", default="cpu", help="torch device of the judge model")
    parser.add_argument("--judge-cache", default=None,
                        help="folder of per-image judge responses (default OUT/judge_cache); reruns resume from it")
    parser.add_argument("--prompts-dir", default=None, help="judge prompt folder (default prompts/pancapscore)")
    parser.add_argument("--no-caption-metrics", action="store_true", help="skip BLEU/CIDEr/ROUGE/METEOR")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR even when Java is present")
    parser.add_argument("--meteor-jar", default=None, help="path to meteor-1.5.jar (default: pycocoevalcap's)")
    parser.add_argument("--html", nargs="?", const="", default=None, metavar="PATH",
                        help="also write a self-contained HTML report (default PATH: OUT/report.html): boxes drawn "
                        "on each image (--image-root) or a blank canvas, matched/missed/extra entities coloured, "
                        "score histograms")
    parser.add_argument("--html-images", type=int, default=100, metavar="N",
                        help="image cards in the HTML report: the first N images (0 = all; every image is in its "
                        "table either way)")
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    from pancapchain.eval.matching import MatchConfig
    from pancapchain.eval.offline import OfflineConfig
    from pancapchain.eval.runner import EvalOptions

    return EvalOptions(
        judge=args.judge,
        embed_model=args.embed_model,
        match=MatchConfig(embed_threshold=args.embed_threshold, iou_threshold=args.iou_threshold,
                          use_wordnet=not args.no_wordnet),
        offline=OfflineConfig(support_threshold=args.support_threshold),
        image_root=args.image_root,
        box_rules=args.box_rules,
        prompts_dir=args.prompts_dir,
        judge_batch_size=args.judge_batch_size,
        judge_max_new_tokens=args.judge_max_new_tokens,
        judge_device=args.judge_device,
        judge_cache=args.judge_cache,
        caption_metrics=not args.no_caption_metrics,
        meteor=not args.no_meteor,
        meteor_jar=args.meteor_jar,
    )


def _preflight(args: argparse.Namespace) -> None:
    """Every argument checked before anything loads or is created."""
    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError

    if args.judge != "offline" and not args.judge.startswith("hf:"):
        raise PreflightError(f"--judge must be 'offline' or 'hf:PATH', got {args.judge!r}")
    if args.judge.startswith("hf:"):
        preflight.existing_dir(args.judge[3:], "--judge hf:")
    preflight.existing_file(args.pred, "--pred")
    preflight.existing_file(args.gt, "--gt")
    preflight.output_dir(args.out, "--out")
    for flag, folder in (("--image-root", args.image_root), ("--prompts-dir", args.prompts_dir)):
        if folder:
            preflight.existing_dir(folder, flag)
    if args.embed_model and args.embed_model != "hashing":
        preflight.existing_dir(args.embed_model, "--embed-model")
    if args.meteor_jar:
        preflight.existing_file(args.meteor_jar, "--meteor-jar")
    if args.judge_cache:
        preflight.output_dir(args.judge_cache, "--judge-cache")
    for flag, value in (("--embed-threshold", args.embed_threshold), ("--iou-threshold", args.iou_threshold),
                        ("--support-threshold", args.support_threshold)):
        preflight.in_range(value, 0.0, 1.0, flag)
    if args.html:
        preflight.output_dir(Path(args.html).parent, "--html")
    preflight.at_least(args.html_images, 0, "--html-images")
    preflight.at_least(args.judge_batch_size, 1, "--judge-batch-size")
    preflight.at_least(args.judge_max_new_tokens, 1, "--judge-max-new-tokens")


def run(args: argparse.Namespace) -> int:
    from pancapchain.errors import UserError, is_user_error

    _preflight(args)
    from pancapchain.eval.report import summary_table, write_outputs  # heavy: only after the checks
    from pancapchain.eval.runner import evaluate
    if not _judge_share_done(args):
        return 0  # a rank other than 0 of a multi-process launch: rank 0 scores with the shared judge cache
    try:
        result = evaluate(args.pred, args.gt, options_from_args(args), out_dir=args.out)
    except ValueError as err:  # evaluation raises plain ValueError for unusable inputs too
        if is_user_error(err):
            raise
        raise UserError(str(err)) from None
    paths = write_outputs(result, args.out)
    print(summary_table(result.metrics))
    warned = [image for image in result.images if image.warnings]
    for image in warned[:MAX_PRINTED_WARNINGS]:
        print(f"warning: {image.id}: {'; '.join(image.warnings)}", file=sys.stderr)
    if len(warned) > MAX_PRINTED_WARNINGS:
        print(f"warning: ... and {len(warned) - MAX_PRINTED_WARNINGS} more images with warnings (see per_image.json)",
              file=sys.stderr)
    print(f"wrote {paths['metrics']}, {paths['per_image']}, {paths['summary']} ({result.metrics['seconds']} s)")
    if args.html is not None:
        from pancapchain.eval.html_report import write_html

        roots = [Path(args.image_root)] if args.image_root else [Path(args.gt).parent]
        html = write_html(result, args.html or Path(args.out) / "report.html", roots, args.html_images)
        print(f"wrote {html}")
    return 0


def _judge_share_done(args: argparse.Namespace) -> bool:
    """Under ``accelerate launch --num_processes N``: each rank judges its shard of the images into the shared
    judge cache (OUT/judge_cache or --judge-cache), then waits for all; True on the rank that scores (0)."""
    from pancapchain.infer.parallel import process_state, rank_device, shard_of

    state = process_state(args.judge_device)
    if state is None:
        return True
    if args.judge.startswith("hf:"):
        from pancapchain.eval.runner import judge_shard

        options = options_from_args(args)
        options.judge_device = rank_device(state, args.judge_device)
        judge_shard(args.pred, args.gt, options, args.out, lambda pairs: shard_of(state, pairs))
    state.wait_for_everyone()
    return state.is_main_process
