"""``pancapchain region``: a short caption of a boxed region (SCA), plus its mask when the model has a mask head.

    pancapchain region --model M --image I --box 0.1,0.2,0.5,0.9 [--out region.json]
"""

from __future__ import annotations

import argparse

from pancapchain.cli.segcap import add_box_task_args, run_box_task


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("region", help="a short caption (+ mask) of a boxed region")
    add_box_task_args(parser, "region")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="", help="JSON file for the result and the settings")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.data.io import atomic_write_json
    from pancapchain.infer.segcap import region

    _, result = run_box_task(args, lambda chain, img, box: region(chain, img, box, max_new_tokens=args.max_new_tokens))
    mask = result["mask"]
    print(result["caption"] + (f"  (mask score {mask['score']})" if mask else ""))
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        atomic_write_json(args.out, {"settings": settings, **result})
    return 0
