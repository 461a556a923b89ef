"""Write a model folder so readers never see a half-written one, and never overwrite without ``force``.

Everything is written into a hidden sibling (``.<name>.partial-<pid>``); only when it is complete does it take
the final name (``os.replace``). An existing non-empty output folder is refused unless ``force`` is given;
with ``force`` the old folder is moved aside, the new one renamed in, then the old one deleted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputDirError(ValueError):
    """The output folder cannot be used (holds files, or would destroy an input); the message says why."""


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(out: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output that holds files (unless ``force``) or that is, contains or lies inside an input."""
    out = out.resolve()
    for source in inputs:
        source = source.resolve()
        if _is_within(source, out) or _is_within(out, source):
            raise OutputDirError(f"--out {out} overlaps the input folder {source}; choose a separate folder")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputDirError(f"--out {out} already holds files; nothing was written (pass --force to replace it)")


@contextmanager
def staged_output(out: Path, force: bool, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; publish it as ``out`` when the block succeeds.

    On any exception the temporary folder is removed and ``out`` is left exactly as it was.
    """
    out = Path(out).resolve()
    check_output_dir(out, force, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        _share_like_umask(staging)
        _publish(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _share_like_umask(folder: Path) -> None:
    """Give files the permissions a plain write would (atomic writers create them owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(staging: Path, out: Path, force: bool) -> None:
    check_output_dir(out, force)  # again: another process may have written there meanwhile
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
