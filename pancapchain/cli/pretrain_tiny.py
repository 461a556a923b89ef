"""``pancapchain pretrain-tiny``: a tiny LLaVA base whose vision tower already sees (for CPU recipes)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain-tiny",
        help="pretrain the tiny base's vision tower on a recipe's synthetic data; save a llava-hf folder",
        description="Build the recipe's tiny LLaVA (model.tiny, tokenizer from data.train), pretrain its vision "
        "tower on dense patch targets (tags + owner boxes) for --seconds, and save it as a llava-hf folder. "
        "Point a recipe at it with model.base=OUT.",
    )
    parser.add_argument("--recipe", required=True, help="recipe YAML whose model.base is tiny")
    parser.add_argument("--out", type=Path, required=True, help="output folder (the new base)")
    parser.add_argument("--seconds", type=float, default=60.0, help="pretraining wall-clock budget (default 60)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--box-head", choices=("bins", "l1"), default="l1",
                        help="owner-box target per patch: l1 = regression (default), bins = one class per "
                             "location-token position for each coordinate (docs/learning_quality.md)")
    parser.add_argument("--thing-weight", type=float, default=None,
                        help="weight of the patches a shape owns in the tag and owner-box losses, the others "
                             "weigh 1 (default: THING_WEIGHT of pancapchain.model.pretrain_tiny)")
    parser.add_argument("--entity-weight", type=float, default=None,
                        help="weight of the loss that names each shape from its pooled patch features, 0 = off "
                             "(default: ENTITY_WEIGHT of pancapchain.model.pretrain_tiny)")
    parser.add_argument("--entity-pool", choices=("mask", "box"), default=None,
                        help="what the whole-shape loss averages: the shape's mask or its box's patches, as the "
                             "chain's box features do (default: ENTITY_POOL of pancapchain.model.pretrain_tiny)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                        help="mirror a random half of each batch left-right, targets too (default: MIRROR of "
                             "pancapchain.model.pretrain_tiny)")
    parser.add_argument("--lm-seconds", type=float, default=None,
                        help="then train the language model on the caption rows without their images for this "
                             "long, so it learns to copy the listed tags and boxes, 0 = off (default: LM_SECONDS "
                             "of pancapchain.model.pretrain_tiny)")
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides, e.g. data.train=...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pancapchain.cli import preflight
    from pancapchain.config import load_recipe

    preflight.recipe_file(args.recipe)
    preflight.at_least(args.seconds, 1, "--seconds")
    preflight.at_least(args.batch_size, 1, "--batch-size")
    if args.thing_weight is not None:
        preflight.at_least(args.thing_weight, 0, "--thing-weight")
    if args.entity_weight is not None:
        preflight.at_least(args.entity_weight, 0, "--entity-weight")
    if args.lm_seconds is not None:
        preflight.at_least(args.lm_seconds, 0, "--lm-seconds")
    cfg = load_recipe(args.recipe, args.overrides)
    preflight.existing_file(cfg.data.train, "data.train")
    preflight.output_dir(args.out, "--out")
    from pancapchain.model.pretrain_tiny import (
        ENTITY_POOL,
        ENTITY_WEIGHT,
        LM_SECONDS,
        MIRROR,
        THING_WEIGHT,
        pretrain_tiny,
    )

    weight = THING_WEIGHT if args.thing_weight is None else args.thing_weight
    entity = ENTITY_WEIGHT if args.entity_weight is None else args.entity_weight
    report = pretrain_tiny(cfg, args.out, args.seconds, lr=args.lr, batch_size=args.batch_size,
                          box_head=args.box_head, thing_weight=weight, entity_weight=entity,
                          lm_seconds=LM_SECONDS if args.lm_seconds is None else args.lm_seconds,
                          entity_pool=ENTITY_POOL if args.entity_pool is None else args.entity_pool,
                          mirror=MIRROR if args.mirror is None else args.mirror)
    whole = f", whole shapes {report['entity_acc']:.3f}" if "entity_acc" in report else ""
    if "lm_steps" in report:
        whole += (f"; language model: {report['lm_steps']} steps on {report['lm_rows']} caption rows without "
                  f"images, answer-token accuracy {report['lm_answer_acc']:.3f}")
    print(
        f"pretrained the tiny vision tower: {report['steps']} steps in {report['seconds']} s on "
        f"{report['images']} images (patch tag accuracy {report['class_acc']:.3f}, on the shapes' patches "
        f"{report['thing_acc']:.3f}{whole}, owner-box L1 "
        f"{report['box_l1']:.3f}); saved the base to {args.out} (total {report['total_seconds']} s)"
    )
    return 0
