"""``pancapchain train --recipe RECIPE.yaml [--print-recipe] [key=value ...]`` (same as ``python train.py``)."""

from __future__ import annotations

import argparse

from pancapchain.config import add_recipe_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train PancapChain from a recipe (see recipes/)")
    add_recipe_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from pancapchain.train.run import run_parsed

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_parsed(args, "pancapchain train", args.debug)
