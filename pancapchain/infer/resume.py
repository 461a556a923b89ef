"""Resumable JSONL outputs (``infer``, ``ground --data``) that touch only files pancapchain wrote.

Rows are appended one whole line per ``write`` + ``fsync``; a run killed midway leaves at most one partial
last line, which the next run cuts before appending. The first run writes a marker beside the output
(``preds.jsonl.pancapchain.json``): an existing file without it is refused, nothing cut or appended, unless
it is a complete predictions file of an earlier version (every line a JSON row with ``id`` and ``stages``,
the last line complete), which is adopted and gets its marker. A marked file with a line that is not a row
is refused too (it was edited since).

Deliberately light (no torch): the CLI runs :func:`check_resumable` before the model loads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pancapchain.data.io import atomic_write_json
from pancapchain.errors import OutputOwnershipError

MARKER_FORMAT = "pancapchain-jsonl/1"
LEGACY_ROW_KEYS = ("id", "stages")  # what every row written by earlier versions of infer/ground carries


def marker_path(out: str | Path) -> Path:
    """The marker that says ``out`` was written by pancapchain: ``<name>.pancapchain.json`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".pancapchain.json")


def has_marker(out: Path) -> bool:
    try:
        return json.loads(marker_path(out).read_text(encoding="utf-8")).get("format") == MARKER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _bad_row(line: bytes, legacy: bool) -> str | None:
    try:
        row = json.loads(line)
    except ValueError:
        return "is not JSON"
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        return "is not a prediction row (no string 'id')"
    if legacy and any(key not in row for key in LEGACY_ROW_KEYS):
        return f"is not a pancapchain prediction row (no {' / '.join(LEGACY_ROW_KEYS)})"
    return None


def check_resumable(out: str | Path) -> str:
    """Whether ``out`` may be resumed, without changing anything: "new", "ours" or "legacy".

    Raises OutputOwnershipError (naming the file, the line and the fix) for a file that is not ours.
    """
    out = Path(out)
    if not out.is_file() or out.stat().st_size == 0:
        return "new"
    data = out.read_bytes()
    ours = has_marker(out)
    complete = data[: data.rfind(b"\n") + 1]
    if not ours and len(complete) != len(data):
        raise OutputOwnershipError(
            f"--out {out} exists, its last line is incomplete and it has no {marker_path(out).name}, so it was "
            "not written by this version of pancapchain: nothing was changed; choose a new --out file")
    for lineno, line in enumerate(complete.splitlines(), start=1):
        problem = _bad_row(line, legacy=not ours) if line.strip() else None
        if problem:
            how = "was changed after pancapchain wrote it" if ours else "was not written by pancapchain"
            raise OutputOwnershipError(
                f"--out {out}: line {lineno} {problem}, so the file {how}: nothing was changed; choose a new "
                "--out file (or remove that line to resume)")
    return "ours" if ours else "legacy"


def claim_output(out: Path, command: str) -> None:
    """Write the marker that lets later runs resume ``out`` (atomically, before the first row)."""
    atomic_write_json(marker_path(out), {
        "format": MARKER_FORMAT,
        "file": out.name,
        "command": f"pancapchain {command}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": f"{out.name} was written by pancapchain {command}; reruns resume it only while this file exists",
    })


def finished_ids(out: Path, command: str = "infer") -> set[str]:
    """Ids already in ``out`` (ours, see :func:`check_resumable`); a partial last line (a killed run) is cut off."""
    out = Path(out)
    status = check_resumable(out)
    if status != "ours":
        claim_output(out, command)
    if status == "new":
        return set()
    data = out.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with out.open("r+b") as fh:
            fh.truncate(keep)
    return {json.loads(line)["id"] for line in data[:keep].splitlines() if line.strip()}


def append_line(out: Path, row: dict) -> None:
    """One whole line per ``write`` call on an O_APPEND descriptor, then fsync."""
    payload = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)




def complete_rows(path: Path) -> dict[str, bytes]:
    """id -> the whole line (bytes, newline included) of every complete row of ``path``; read-only, so it is safe
    on a file another process is appending to (a partial last line is ignored, not cut)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    rows: dict[str, bytes] = {}
    for line in data[: data.rfind(b"\n") + 1].splitlines(keepends=True):
        if line.strip():
            rows.setdefault(json.loads(line)["id"], line)
    return rows


def append_lines(out: Path, lines: list[bytes]) -> None:
    """Append whole lines in one go (a loop of ``write`` calls on one O_APPEND descriptor), then fsync; a kill
    midway leaves at most one partial last line, which the next :func:`finished_ids` cuts."""
    payload = memoryview(b"".join(lines))
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while payload:
            payload = payload[os.write(fd, payload):]
        os.fsync(fd)
    finally:
        os.close(fd)
