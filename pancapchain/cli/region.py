"""``pancapchain region``: a short caption of a boxed region (SCA), plus its mask when the model has a mask head.

    pancapchain region --model M --image I --box 0.1,0.2,0.5,0.9 [--out region.json]
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("region", help="a short caption (+ mask) of a boxed region")
    parser.add_argument("--model", required=True, help="a checkpoint or export trained with region rows")
    parser.add_argument("--image", required=True)
    parser.add_argument("--box", required=True, help="x1,y1,x2,y2 normalized on the original image")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="", help="JSON file for the result and the settings")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from PIL import Image

    from pancapchain.data.io import atomic_write_json
    from pancapchain.data.prompts import PromptError
    from pancapchain.infer.chain import PancapChain
    from pancapchain.infer.segcap import parse_box_arg, region

    try:
        box = parse_box_arg(args.box)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    chain = PancapChain.from_pretrained(args.model, device=args.device)
    try:
        with Image.open(args.image) as img:
            result = region(chain, img, box, max_new_tokens=args.max_new_tokens)
    except PromptError as err:
        print(f"error: {err}")
        return 2
    mask = result["mask"]
    print(result["caption"] + (f"  (mask score {mask['score']})" if mask else ""))
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        atomic_write_json(args.out, {"settings": settings, **result})
    return 0
