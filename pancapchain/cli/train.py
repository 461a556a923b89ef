"""``pancapchain train --recipe RECIPE.yaml [key=value ...]`` (same as ``python train.py``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train PancapChain from a recipe (see recipes/)")
    parser.add_argument("--recipe", required=True, help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.train.run import main

    return main(["--recipe", args.recipe, *args.overrides], prog="pancapchain train", debug=args.debug)
