"""``pancapchain chat --model CKPT [--image PATH]``: the chain stage by stage, with edits (see infer/chat.py)."""

from __future__ import annotations

import argparse

from pancapchain.cli.infer import (
    add_generation_args,
    check_chain_options,
    check_generation_args,
    generation_options,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("chat", help="run the chain one stage at a time and edit each stage (REPL)")
    parser.add_argument("--model", required=True, help="a training checkpoint or an export directory")
    parser.add_argument("--image", default="", help="an image to load at start")
    add_generation_args(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.cli import preflight
    from pancapchain.infer.chat import ChatSession

    if args.image:
        preflight.image_file(args.image, "--image")
    check_generation_args(args)
    preflight.model_dir(args.model)
    chain, options = preflight.load_chain(args.model, args.device), generation_options(args)
    check_chain_options(chain, options)
    session = ChatSession(chain, options, debug=getattr(args, "debug", False))
    session.say("pancapchain chat: `help` lists the commands")
    if args.image:
        session.cmd_image(args.image)
    return session.loop()
