"""JSONL reading with counted skips, and atomic writes for every result file."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pancapchain.data.schema import PanopticSample, SampleError


@dataclass
class SkipReport:
    """Records that were skipped, each with the reason; printed at the end of every job that skips."""

    what: str = "records"
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, record: str, reason: str) -> None:
        self.skipped.append((record, reason))

    def merge(self, other: SkipReport) -> None:
        self.kept = other.kept if not self.kept else self.kept
        self.skipped.extend(other.skipped)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def reasons(self) -> Counter:
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.what}: kept {self.kept}, skipped {self.n_skipped}"]
        for record, reason in self.skipped[:limit]:
            lines.append(f"  - {record}: {reason}")
        if self.n_skipped > limit:
            lines.append(f"  ... and {self.n_skipped - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "kept": self.kept,
            "skipped": [{"record": r, "reason": why} for r, why in self.skipped],
        }


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers never see a half-written file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results should get the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write rows as JSONL; returns the number of rows."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


MAX_LINE_CHARS = 64 * 2**20  # a longer line is skipped unread (a runaway generation, a binary file)


def read_line_bounded(fh, limit: int) -> tuple[str, int]:
    """The next line (``""`` at the end of the file) and its length; past ``limit`` characters the rest of
    the line is consumed in chunks and ``("", length)`` returned, so memory stays bounded."""
    line = fh.readline(limit + 1)
    if len(line) <= limit or line.endswith("\n"):
        return line, len(line)
    length = len(line)
    while True:
        chunk = fh.readline(2**20)
        length += len(chunk)
        if not chunk or chunk.endswith("\n"):
            return "", length


def iter_jsonl(path: str | Path, report: SkipReport, max_line: int | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, decoded_object)`` per non-blank line; malformed lines and lines longer than
    ``max_line`` characters (default ``MAX_LINE_CHARS``) are skipped into ``report``."""
    path = Path(path)
    max_line = max_line or MAX_LINE_CHARS
    with path.open(encoding="utf-8") as fh:
        lineno = 0
        while True:
            line, length = read_line_bounded(fh, max_line)
            if not length:
                return
            lineno += 1
            where = f"{path.name}:{lineno}"
            if length > max_line:
                report.skip(where, f"too long: {length} characters on one line, more than {max_line} (not read)")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                report.skip(where, f"malformed JSON: {err.msg} at column {err.colno}")


def save_samples(path: str | Path, samples: Iterable[PanopticSample]) -> int:
    return write_jsonl(path, (s.to_dict() for s in samples))


def load_samples(path: str | Path, strict: bool = False) -> tuple[list[PanopticSample], SkipReport]:
    """Read and validate a JSONL file of panoptic samples.

    Invalid records are skipped and reported (``strict=True`` raises on the first one instead).
    Duplicate sample ids keep the first occurrence and report the rest.
    """
    report = SkipReport(what=f"samples in {Path(path).name}")
    samples: list[PanopticSample] = []
    seen: set[str] = set()
    for where, obj in iter_jsonl(path, report):
        try:
            sample = PanopticSample.from_dict(obj, where)
        except SampleError as err:
            if strict:
                raise
            report.skip(err.record, f"invalid: {err.problem}")
            continue
        if sample.id in seen:
            if strict:
                raise SampleError(where, f"duplicate sample id {sample.id}")
            report.skip(where, f"duplicate: sample id {sample.id} already seen")
            continue
        seen.add(sample.id)
        samples.append(sample)
    if strict and report.skipped:
        record, reason = report.skipped[0]
        raise SampleError(record, reason)
    report.kept = len(samples)
    return samples, report
