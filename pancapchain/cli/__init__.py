"""The ``pancapchain`` command: one subcommand per module under ``pancapchain.cli``.

Each module listed in COMMANDS defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args; its return value is the exit code). ``main`` runs it under the
error policy of :mod:`pancapchain.errors`: user errors print one line and exit 2, Ctrl-C exits 130,
``--debug`` anywhere on the command line (or ``PANCAPCHAIN_DEBUG=1``) shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pancapchain.errors import ArgumentParser, debug_requested, run_guarded

COMMANDS = (
    "train",
    "pretrain-tiny",
    "validate-data",
    "synth",
    "prepare",
    "infer",
    "chat",
    "serve",
    "visualize",
    "ground",
    "segcap",
    "region",
    "eval",
    "export",
    "convert-llava",
    "plan-memory",
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="pancapchain", description=__doc__.splitlines()[0],
        epilog="Add --debug (or set PANCAPCHAIN_DEBUG=1) to see the traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pancapchain.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    args.debug = debug
    prog = f"pancapchain {args.command}"
    return run_guarded(lambda: args.func(args), prog, debug)


if __name__ == "__main__":
    sys.exit(main())
