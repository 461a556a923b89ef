"""``pancapchain chat --model CKPT [--image PATH]``: the chain stage by stage, with edits (see infer/chat.py)."""

from __future__ import annotations

import argparse

from pancapchain.cli.infer import add_generation_args, generation_options


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("chat", help="run the chain one stage at a time and edit each stage (REPL)")
    parser.add_argument("--model", required=True, help="a training checkpoint or an export directory")
    parser.add_argument("--image", default="", help="an image to load at start")
    add_generation_args(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pancapchain.infer.chain import PancapChain
    from pancapchain.infer.chat import ChatSession

    session = ChatSession(PancapChain.from_pretrained(args.model, device=args.device), generation_options(args))
    session.say("pancapchain chat: `help` lists the commands")
    if args.image:
        session.cmd_image(args.image)
    return session.loop()
