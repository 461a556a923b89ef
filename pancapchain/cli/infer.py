"""``pancapchain infer --model CKPT_OR_EXPORT --data JSONL_OR_IMAGE_DIR --out preds.jsonl``: the chain over a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from pancapchain.constants import DIRECT, GIVEN_BOX_STAGES, ORACLE_STAGES, STAGES


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """Decoding options shared by ``infer``, ``chat`` and the benchmarks."""
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="per-stage budget for every stage (0: the defaults, 512/768/512/1024)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-after", choices=STAGES, default=None, help="stop the chain after this stage")
    parser.add_argument("--no-repeat-stop", action="store_true",
                        help="let a looping answer run to max tokens (default: end it at the first repeated item)")
    parser.add_argument("--free-boxes", action="store_true",
                        help="let the label and caption stages write boxes their prompt does not give "
                             "(default: only the given ones; location-token box format)")
    parser.add_argument("--ordered-boxes", default=None,
                        help="comma-separated given-box stages (label, caption) whose answer must write every "
                             "given box once, in the prompt's order; 'none': no stage (default: label,caption; "
                             "none with --free-boxes)")
    parser.add_argument("--no-repeat-ngram", type=int, default=8,
                        help="captions: forbid the token that would repeat a run of N tokens of the same answer, "
                             "so a loop goes on with new text instead of ending the caption (0: off)")
    parser.add_argument("--free-references", action="store_true",
                        help="box-first captions: let a tag after 'the' name an entity the caption has not named "
                             "(default: only named ones, pancapchain.infer.references)")
    parser.add_argument("--reference-tags", default="",
                        help="panoptic JSONL whose entity tags are the known tags of that rule (default: the "
                             "training data's tags stored in the checkpoint)")
    parser.add_argument("--refind-iou", type=float, default=0.5,
                        help="stage 3: drop a found item whose boxes all overlap a stage-2 box at IoU >= this (the "
                             "known entity found again); 0 keeps every item (default 0.5, the matching IoU)")
    parser.add_argument("--keep-late-boxes", action="store_true",
                        help="ordered captions: keep boxes forced in after the closing paragraph (default: decode "
                             "such a caption again from before that paragraph, pancapchain.infer.late_boxes)")
    parser.add_argument("--localize-views", type=int, default=1,
                        help="stage 1: decode on this many copies of the image moved by half a vision patch and "
                             "vote their box lists into one (1-9; default 1: the image only, pancapchain.infer.views)")
    parser.add_argument("--localize-mirror", action="store_true",
                        help="stage 1: decode each view also mirrored left to right (twice the views vote)")
    parser.add_argument("--localize-votes", type=int, default=0,
                        help="stage 1 with views: keep an entity found by at least this many views (default: a "
                             "majority, views // 2 + 1, of all views with their mirror images)")
    parser.add_argument("--localize-suppress", type=float, default=0.0,
                        help="stage 1 with views: drop a voted entity whose box overlaps, at IoU >= this, one that "
                             "more views found (default 0: off)")
    parser.add_argument("--discover-seen", type=int, default=0,
                        help="stage 1 with views: drop a stage-3 find that fewer than this many views boxed "
                             "(IoU >= 0.5; default 0 keeps every find)")
    parser.add_argument("--localize-view-batch", type=int, default=1,
                        help="stage 1 with views: decode this many views of every image in one generate call "
                             "(rows per call: --batch-size x this; the answers are the same, more is faster on a "
                             "CPU and needs that much more memory on a GPU; default 1)")
    parser.add_argument("--localize-mask-boxes", action="store_true",
                        help="stage 1 with views and a mask head trained on stage-1 answers: each view's boxes "
                             "become the bounding boxes of their predicted masks before the vote")
    parser.add_argument("--device", default="cpu")


def check_generation_args(args: argparse.Namespace) -> None:
    """Range checks of the decoding options (before the model loads)."""
    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError

    preflight.at_least(args.max_new_tokens, 0, "--max-new-tokens")
    preflight.in_range(args.temperature, 1e-6, 100.0, "--temperature")
    preflight.in_range(args.top_p, 1e-6, 1.0, "--top-p")
    preflight.at_least(args.seed, 0, "--seed")
    if args.no_repeat_ngram == 1:
        raise PreflightError("--no-repeat-ngram 1 would forbid every token already written: use 0 (off) or >= 2")
    preflight.at_least(args.no_repeat_ngram, 0, "--no-repeat-ngram")
    preflight.in_range(getattr(args, "refind_iou", 0.5), 0.0, 1.0, "--refind-iou")
    from pancapchain.infer.views import VIEW_SHIFTS

    preflight.in_range(getattr(args, "localize_views", 1), 1, len(VIEW_SHIFTS), "--localize-views")
    views = total_views(args)
    preflight.in_range(getattr(args, "localize_votes", 0), 0, views, "--localize-votes")
    preflight.in_range(getattr(args, "localize_suppress", 0.0), 0.0, 1.0, "--localize-suppress")
    if getattr(args, "localize_suppress", 0.0) and views == 1:
        raise PreflightError("--localize-suppress compares how many stage-1 views found two overlapping entities: "
                             "it needs --localize-views > 1 or --localize-mirror")
    if getattr(args, "discover_seen", 0) and views == 1:
        raise PreflightError("--discover-seen counts the stage-1 views that boxed a find: it needs --localize-views > 1 "
                             "or --localize-mirror")
    preflight.in_range(getattr(args, "discover_seen", 0), 0, views, "--discover-seen")
    preflight.at_least(getattr(args, "localize_view_batch", 1), 1, "--localize-view-batch")
    if getattr(args, "localize_mask_boxes", False) and views == 1:
        raise PreflightError("--localize-mask-boxes moves each stage-1 view's boxes before the vote: it needs "
                             "--localize-views > 1 or --localize-mirror")
    if getattr(args, "reference_tags", ""):
        if getattr(args, "free_references", False):
            raise PreflightError("--reference-tags sets the tags of the rule --free-references turns off: drop one")
        preflight.existing_file(args.reference_tags, "--reference-tags")
    if getattr(args, "free_boxes", False) and ordered_stages(args):
        raise PreflightError(f"--ordered-boxes {args.ordered_boxes!r} orders the given boxes, which --free-boxes "
                             "turns off: drop one of the two")
    wrong = set(ordered_stages(args)) - set(GIVEN_BOX_STAGES)
    if wrong:
        raise PreflightError(f"--ordered-boxes {args.ordered_boxes!r}: {sorted(wrong)} give no boxes; choose "
                             f"from {', '.join(GIVEN_BOX_STAGES)} or 'none'")


def check_chain_options(chain, options, plan: str = "chain") -> None:
    """Decoding options the loaded model cannot serve (after loading: only then is its mask head known)."""
    from pancapchain.errors import PreflightError

    if not options.localize_mask_boxes or plan == "direct":  # direct captioning has no stage 1
        return
    if chain.masks is None:
        raise PreflightError("--localize-mask-boxes reads stage-1 boxes off the mask head, and this model has none "
                             "(train with mask.enabled: true and localize in mask.stages)")
    if not chain.stage1_masks:
        raise PreflightError("--localize-mask-boxes reads stage-1 boxes off the mask head, and this model's head was "
                             "not trained on stage-1 answers (localize is not in its mask.stages, or its rows are "
                             "conversations): its masks would move the boxes off; drop the flag or retrain")


def ordered_stages(args: argparse.Namespace) -> tuple[str, ...]:
    """The stages of ``--ordered-boxes`` ('none' or empty: no stage; unset: label and caption, or none with
    --free-boxes)."""
    text = getattr(args, "ordered_boxes", None)
    if text is None:
        return () if getattr(args, "free_boxes", False) else ("label", "caption")
    text = text.strip()
    return () if text in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


def generation_options(args: argparse.Namespace):
    from pancapchain.infer.generation import DEFAULT_MAX_NEW_TOKENS, GenerationOptions
    from pancapchain.infer.references import training_tags

    budget = ({s: args.max_new_tokens for s in (*STAGES, DIRECT)} if args.max_new_tokens > 0
              else dict(DEFAULT_MAX_NEW_TOKENS))
    return GenerationOptions(budget, args.sample, args.temperature, args.top_p, args.seed, args.stop_after,
                             stop_on_repeat=not getattr(args, "no_repeat_stop", False),
                             given_boxes=not getattr(args, "free_boxes", False),
                             no_repeat_ngram=getattr(args, "no_repeat_ngram", 8),
                             ordered_boxes=ordered_stages(args),
                             named_references=not getattr(args, "free_references", False),
                             reference_tags=tuple(training_tags(args.reference_tags))
                             if getattr(args, "reference_tags", "") else (),
                             refind_iou=getattr(args, "refind_iou", 0.5),
                             late_boxes=not getattr(args, "keep_late_boxes", False),
                             localize_views=getattr(args, "localize_views", 1),
                             localize_votes=localize_votes(args),
                             localize_mirror=getattr(args, "localize_mirror", False),
                             localize_suppress=getattr(args, "localize_suppress", 0.0),
                             discover_seen=getattr(args, "discover_seen", 0),
                             localize_view_batch=getattr(args, "localize_view_batch", 1),
                             localize_mask_boxes=getattr(args, "localize_mask_boxes", False))


def total_views(args: argparse.Namespace) -> int:
    """The stage-1 views that vote: ``--localize-views``, twice with ``--localize-mirror``."""
    from pancapchain.infer.views import total_views as views_voting

    return views_voting(getattr(args, "localize_views", 1), getattr(args, "localize_mirror", False))


def localize_votes(args: argparse.Namespace) -> int:
    """``--localize-votes``, or a majority of the views when it is 0 (unset)."""
    return getattr(args, "localize_votes", 0) or total_views(args) // 2 + 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("infer", help="run the four-stage chain over a JSONL or an image folder")
    parser.add_argument("--model", required=True, help="a training checkpoint or an export directory")
    parser.add_argument("--data", required=True, help="panoptic JSONL or a directory of images")
    parser.add_argument("--image-root", default="", help="image root for a JSONL (default: its directory)")
    parser.add_argument("--out", required=True, help="predictions JSONL (appended; reruns resume)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images")
    plan = parser.add_mutually_exclusive_group()
    plan.add_argument("--direct", dest="plan", action="store_const", const="direct",
                      help="direct captioning (the paper's baseline): one prompt, image -> grounded caption; "
                           "the model must have been trained with data.stages.direct > 0")
    plan.add_argument("--skip-discover", dest="plan", action="store_const", const="no-discover",
                      help="the chain without stage 3 (localize -> label -> caption)")
    parser.set_defaults(plan="chain")
    parser.add_argument("--oracle-through", choices=ORACLE_STAGES, default=None,
                        help="take the answers of the stages up to this one from the ground truth of --data (a "
                             "panoptic JSONL) instead of generating them: what the later stages do with perfect "
                             "input (localize: every box; label: + every tag; discover: + nothing missing)")
    add_generation_args(parser)
    parser.set_defaults(func=_run)


def _preflight(args: argparse.Namespace) -> None:
    from pancapchain.cli import preflight
    from pancapchain.infer.resume import check_resumable

    preflight.existing_path(args.data, "--data")
    if args.oracle_through and (args.plan == "direct" or Path(args.data).is_dir()):
        raise SystemExit("--oracle-through takes chain stages from the ground truth of a panoptic JSONL: "
                         "drop --direct and give --data as a JSONL with entities")
    if args.image_root:
        preflight.existing_dir(args.image_root, "--image-root")
    preflight.output_file(args.out, "--out")
    preflight.at_least(args.batch_size, 1, "--batch-size")
    preflight.at_least(args.limit, 0, "--limit")
    check_generation_args(args)
    check_resumable(args.out)
    preflight.model_dir(args.model)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.cli.preflight import load_chain

    _preflight(args)
    from pancapchain.infer.batch import run_inference  # heavy (torch): only after the checks
    from pancapchain.infer.parallel import process_state, rank_device

    state = process_state(args.device)  # None unless started by accelerate launch with several processes
    chain = load_chain(args.model, rank_device(state, args.device))
    options = generation_options(args)
    check_chain_options(chain, options, args.plan)
    summary = run_inference(chain, args.data, args.out, args.batch_size, options,
                            args.image_root or None, args.limit, plan=args.plan, state=state,
                            oracle_through=args.oracle_through)
    if summary is None:  # a rank other than 0: its rows were merged by rank 0
        return 0
    print(f"images: {summary['images_total']} (already done {summary['already_done']}, "
          f"written {summary['written']}, skipped {len(summary['skipped'])}, processes {summary['processes']})")
    print("seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds_per_stage"].items()))
    print(f"seconds per image: {summary['seconds_per_image']:.3f}; "
          f"truncated per stage: {summary['truncated_per_stage']}")
    for skipped in summary["skipped"]:
        print(f"  skipped {skipped['record']}: {skipped['reason']}")
    return 0
