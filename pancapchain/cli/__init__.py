"""The ``pancapchain`` command: one subcommand per module under ``pancapchain.cli``.

Each module listed in COMMANDS defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args; its return value is the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "train",
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
    parser = argparse.ArgumentParser(prog="pancapchain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pancapchain.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
