"""``pancapchain ground``: a mask for every boxed phrase of a given narrative (teacher-forced, DiffPNG-style).

    pancapchain ground --model M --image I --caption "A dog [[0.1, 0.2, 0.5, 0.9]] ..." [--out result.json]
    pancapchain ground --model M --data val.jsonl --out grounded.jsonl     # each sample's own caption
Score a dataset run with ``pancapchain eval --pred grounded.jsonl --gt val.jsonl`` (mask mIoU, PNG AR).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ground", help="masks for the boxed phrases of a given caption (or a dataset's captions)")
    parser.add_argument("--model", required=True, help="a checkpoint or export with a mask head")
    parser.add_argument("--image", default="", help="one image (with --caption)")
    parser.add_argument("--caption", default="", help="the narrative with inline boxes (either box format)")
    parser.add_argument("--data", default="", help="a panoptic JSONL: ground each sample's caption")
    parser.add_argument("--image-root", default="", help="image root for --data (default: its directory)")
    parser.add_argument("--out", default="", help="JSON (one image) or JSONL (--data, appended, resumable)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--candidates", default="", help="SAM candidate masks file for SMR refinement")
    source.add_argument("--sam", default="", help="SAM checkpoint folder: automatic-mask candidates for SMR")
    parser.add_argument("--tau", type=float, default=0.5, help="SMR overlap threshold")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=_run)


def _preflight(args: argparse.Namespace) -> None:
    """Every argument checked before the model loads; nothing is created here."""
    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError
    from pancapchain.infer.resume import check_resumable

    if bool(args.data) == bool(args.image):
        raise PreflightError("give either --data JSONL, or --image with --caption")
    if args.data:
        preflight.existing_file(args.data, "--data")
        if not args.out:
            raise PreflightError("--data needs --out (the JSONL the grounded samples are appended to)")
        if args.image_root:
            preflight.existing_dir(args.image_root, "--image-root")
    else:
        preflight.image_file(args.image, "--image")
        if not args.caption.strip():
            raise PreflightError("--image needs --caption (the narrative with inline boxes to ground)")
    if args.out:
        preflight.output_file(args.out, "--out")
        if args.data:
            check_resumable(args.out)
    if args.candidates:
        preflight.existing_file(args.candidates, "--candidates")
    if args.sam:
        preflight.existing_dir(args.sam, "--sam")
    preflight.in_range(args.tau, 0.0, 1.0, "--tau")
    model = preflight.model_dir(args.model)
    if not (model / "mask_head.json").is_file():
        raise PreflightError(f"--model {model}: has no mask head (mask_head.json); ground needs a model trained "
                             "with mask.enabled=true, e.g. recipes/tiny_mask.yaml")


def _run(args: argparse.Namespace) -> int:
    _preflight(args)
    from PIL import Image  # the rest is heavy (torch): only after the checks

    from pancapchain.cli.preflight import load_chain
    from pancapchain.data.io import atomic_write_json
    from pancapchain.infer.ground import ground, ground_dataset
    from pancapchain.infer.parallel import process_state, rank_device
    from pancapchain.mask.refine import candidate_masks, load_candidates

    candidates = load_candidates(args.candidates) if args.candidates else None
    state = process_state(args.device) if args.data else None  # set under accelerate launch with N processes
    device = rank_device(state, args.device)
    chain = load_chain(args.model, device)
    auto = _sam_candidates(args.sam, device) if args.sam else None
    if args.data:
        report = ground_dataset(chain, args.data, args.out, args.image_root or None, candidates, args.tau, auto,
                                state=state)
        if report is not None:  # None on ranks other than 0 (rank 0 merged their rows)
            print(report.summary())
        return 0
    with Image.open(args.image) as img:
        image_id = args.image.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        cands = candidate_masks(candidates[image_id], img.height, img.width, image_id) \
            if candidates and image_id in candidates else None
        cands = auto(img) if auto else cands
        result = ground(chain, img, args.caption, image_id, cands, args.tau)
    for entity, entry in zip(result["entities"], result["masks"]):
        print(f"{entity['tag'] or '?'} {entity['box']}: mask score {entry['score']}")
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def _sam_candidates(sam_path: str, device: str):
    """image -> SAM automatic candidate masks (the model is loaded once, here)."""
    from pancapchain.mask.sam_tools import SamRunner, automatic_candidates

    runner = SamRunner(sam_path, device=device)
    return lambda image: automatic_candidates(runner, image)
