"""``pancapchain segcap``: K diverse (caption, masks) pairs centred on a boxed entity (SGDiff SegCaptioning).

    pancapchain segcap --model M --image I --box 0.1,0.2,0.5,0.9 -k 5 [--out pairs.json]
The box is normalized xyxy on the original image. Captions are sampled (temperature/top-p), exact and
near duplicates (token-set Jaccard >= --near-duplicate) removed, refilled for at most --max-rounds rounds;
with a mask head every box group of every caption gets a mask. --out gets the pairs and the settings.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segcap", help="K diverse (caption, masks) pairs for a boxed entity")
    add_box_task_args(parser, "segcap")
    parser.add_argument("-k", type=int, default=5, help="how many distinct pairs")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="round r samples with seed + r")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-rounds", type=int, default=4, help="sampling rounds of K answers at most")
    parser.add_argument("--near-duplicate", type=float, default=0.9, help="token-set Jaccard of a near duplicate")
    parser.add_argument("--out", default="", help="JSON file for the pairs and the settings")
    parser.set_defaults(func=_run)


def add_box_task_args(parser: argparse.ArgumentParser, trained_with: str) -> None:
    """--model/--image/--box/--device, shared by `segcap` and `region`."""
    parser.add_argument("--model", required=True, help=f"a checkpoint or export trained with {trained_with} rows")
    parser.add_argument("--image", required=True)
    parser.add_argument("--box", required=True, help="x1,y1,x2,y2 normalized on the original image")
    parser.add_argument("--device", default="cpu")


def box_argument(text: str) -> tuple:
    """``--box`` parsed and validated; a bad box is a user error naming the value."""
    from pancapchain.errors import PreflightError
    from pancapchain.infer.segcap import parse_box_arg

    try:
        return parse_box_arg(text)
    except ValueError as err:  # the box reader's message already names "--box '...'" (said once, not twice)
        message = str(err).removeprefix("box ")
        raise PreflightError(message if message.startswith("--box") else f"--box {text!r}: {message}") from None


def check_box_task_args(args: argparse.Namespace) -> tuple:
    """Pre-flight of segcap/region (before the model loads): the box, the image, the output and the numbers."""
    from pancapchain.cli import preflight

    preflight.image_file(args.image, "--image")
    if args.out:
        preflight.output_file(args.out, "--out")
    preflight.at_least(args.max_new_tokens, 1, "--max-new-tokens")
    preflight.model_dir(args.model)
    return box_argument(args.box)  # imports the inference code (torch): the cheap checks come first


def run_box_task(args: argparse.Namespace, call) -> tuple:
    """Check the arguments, load the model, open --image, run ``call(chain, image, box)``: (box, result)."""
    from PIL import Image

    from pancapchain.cli.preflight import load_chain
    from pancapchain.data.prompts import PromptError
    from pancapchain.errors import UserError

    box = check_box_task_args(args)
    chain = load_chain(args.model, args.device)
    try:
        with Image.open(args.image) as img:
            return box, call(chain, img, box)
    except (PromptError, ValueError) as err:  # e.g. a model not trained for this task
        raise UserError(f"--model {args.model}: {err}") from None


def _check_sampling(args: argparse.Namespace) -> None:
    from pancapchain.cli import preflight

    preflight.at_least(args.k, 1, "-k")
    preflight.in_range(args.temperature, 1e-6, 100.0, "--temperature")
    preflight.in_range(args.top_p, 1e-6, 1.0, "--top-p")
    preflight.at_least(args.max_rounds, 1, "--max-rounds")
    preflight.in_range(args.near_duplicate, 0.0, 1.0, "--near-duplicate")


def _run(args: argparse.Namespace) -> int:
    from pancapchain.data.io import atomic_write_json
    from pancapchain.infer.segcap import segcap

    _check_sampling(args)
    box, pairs = run_box_task(args, lambda chain, img, box: segcap(
        chain, img, box, args.k, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        max_new_tokens=args.max_new_tokens, max_rounds=args.max_rounds, near_duplicate=args.near_duplicate))
    for i, pair in enumerate(pairs):
        print(f"[{i}] {pair['caption']}  ({len(pair['masks'])} masks)")
    if len(pairs) < args.k:
        print(f"only {len(pairs)} distinct pairs of {args.k} after {args.max_rounds} rounds")
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        atomic_write_json(args.out, {"settings": settings, "box": list(box), "pairs": pairs})
    return 0
