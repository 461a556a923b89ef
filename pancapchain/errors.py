"""One error policy for every command (``pancapchain ...`` and ``train.py``).

A *user error* (a bad argument, a missing or unreadable file, a folder that is not a checkpoint, a bad
recipe, a permission problem) ends the command with one line on stderr naming the input and what to do,
and exit code 2. Ctrl-C ends it with exit code 130 after a clean stop. Anything else is a bug in
pancapchain and keeps its traceback. ``--debug`` (anywhere on the command line) or ``PANCAPCHAIN_DEBUG=1``
prints the traceback of user errors too.

User errors are recognised by class name along the exception's MRO, so this module imports nothing heavy
and picks up error classes that other modules define (e.g. ``pancapchain.data.boxes.BoxFormatError``).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """Bad input from the person running the command; the message names the input and the fix."""


class PreflightError(UserError):
    """An argument that fails a check made before any model is loaded or any output is created."""


class OutputOwnershipError(UserError):
    """An output file that pancapchain did not write and must therefore neither append to nor cut."""


class TrainingInterrupted(UserError):
    """Training stopped by Ctrl-C at a step boundary; the message says what was kept."""


# Project error types that mean "the input is wrong", by ``module:qualname`` (no import needed).
USER_ERROR_CLASSES = frozenset({
    "pancapchain.config:ConfigError",
    "pancapchain.data.schema:SampleError",
    "pancapchain.data.prompts:PromptError",
    "pancapchain.data.boxes:BoxFormatError",
    "pancapchain.data.box_tasks:NoTaskExample",
    "pancapchain.model.checkpoint:CheckpointError",
    "pancapchain.model.staging:OutputDirError",
    "pancapchain.model.export:ExportError",
    "pancapchain.model.merge:MergeError",
    "pancapchain.model.llava_original:ConvertError",
    "pancapchain.model.quant:QuantizationError",
    "pancapchain.mask.refine:CandidateFileError",
    "pancapchain.mask.sam_head:MaskHeadError",
    "pancapchain.infer.chat:ChatError",
    "pancapchain.infer.session:SessionError",
    "pancapchain.model.model_card:ModelCardError",
})


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the policy's error format: the usage on one line, then one ``<prog>: error: ...`` line
    (the last line, as for every other user error), exit code 2. Subcommand parsers inherit the class."""

    def error(self, message: str):
        usage = " ".join(self.format_usage().split())
        self.exit(EXIT_USER_ERROR, f"{usage}\n{self.prog}: error: {message} (see {self.prog} --help)\n")


def is_user_error(err: BaseException) -> bool:
    """True for UserError, the project's input-error classes and operating-system errors (files, permissions)."""
    if isinstance(err, (UserError, OSError)):
        return True
    return any(f"{cls.__module__}:{cls.__qualname__}" in USER_ERROR_CLASSES for cls in type(err).__mro__)


def _os_error_line(err: OSError) -> str:
    """``PATH: what happened`` for errno errors; the library's own message otherwise (e.g. PIL, transformers)."""
    name = err.filename if err.filename is not None else ""
    advice = {
        errno.ENOENT: "no such file or directory (check the path)",
        errno.EACCES: "permission denied (check its permissions or choose another path)",
        errno.EPERM: "operation not permitted (check its permissions or choose another path)",
        errno.EISDIR: "is a directory, a file was expected",
        errno.ENOTDIR: "a part of this path is not a directory",
        errno.ENOSPC: "no space left on the device (free some space and rerun)",
        errno.EROFS: "read-only file system (choose another path)",
    }
    if err.errno in advice:
        return f"{name}: {advice[err.errno]}" if name else advice[err.errno]
    if err.strerror:
        return f"{name}: {err.strerror}" if name else err.strerror
    return str(err) or type(err).__name__


def one_line(err: BaseException) -> str:
    """The error's message on a single line (multi-line messages such as recipe problem lists joined by '; ')."""
    text = _os_error_line(err) if isinstance(err, OSError) else str(err)
    parts = [p.strip().removeprefix("- ").strip() for p in text.splitlines() if p.strip()]
    if not parts:
        return type(err).__name__
    head, rest = parts[0], parts[1:]
    if rest and head.endswith(":"):
        return head + " " + "; ".join(rest)
    return "; ".join(parts)


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (taken from anywhere before a ``--``) and whether debugging is on."""
    env = os.environ.get("PANCAPCHAIN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    cut = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    return kept, env or len(kept) != len(argv)


def run_guarded(call: Callable[[], int], prog: str, debug: bool = False) -> int:
    """Run ``call`` under the error policy: its exit code, 2 for a user error, 130 for Ctrl-C.

    Internal errors propagate (Python prints the traceback and exits 1).
    """
    try:
        return int(call() or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted (Ctrl-C); stopped before finishing", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as err:
        if not is_user_error(err):
            raise
        if debug:
            traceback.print_exc()
        code = EXIT_INTERRUPTED if isinstance(err, TrainingInterrupted) else EXIT_USER_ERROR
        if not getattr(err, "quiet", False):  # e.g. the same stop on the other ranks of a launch
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return code
