"""Data-parallel dataset runs: ``accelerate launch --num_processes N -m pancapchain infer|ground|eval ...``.

Each rank takes a disjoint, deterministic shard of the input (accelerate's ``split_between_processes``:
contiguous blocks in input order, computed on the whole input so a relaunch gives every rank the same shard)
and appends its rows to its own part file ``preds.part-R-of-N.jsonl`` with the resumable writes of
:mod:`pancapchain.infer.resume` (marker included). When every rank is done (a barrier), rank 0 appends the
part rows to ``preds.jsonl`` in input order and removes the parts, so the merged file is byte-identical to a
one-process run. A killed rank takes the launch down (torchrun stops the others); a relaunch skips every id
already in the output or in any part file, whatever world size wrote it, so nothing is duplicated or lost.

One process (no launcher) is the same code with one shard written straight to the output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pancapchain.infer.resume import (
    append_lines,
    check_resumable,
    complete_rows,
    finished_ids,
    has_marker,
    marker_path,
)

PART_RE = re.compile(r"\.part-(\d+)-of-(\d+)$")
# Ranks finish their shards at different times and rank 0 then merges; torch's default collective timeout
# (10-30 min) would kill a long run waiting at the final barrier.
BARRIER_TIMEOUT = timedelta(hours=48)


def launched_world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` set by accelerate launch / torchrun; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_state(device: str):
    """accelerate's ``PartialState`` for a multi-process launch, else None (one process: nothing initialised).

    ``device`` "cpu" (or a machine without CUDA) gives gloo ranks on CPU; "cuda" gives each rank its own GPU.
    """
    if launched_world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)


def rank_device(state, device: str) -> str:
    """The device this rank runs on: its own GPU under a multi-GPU launch, else ``device`` as given."""
    if state is None or device == "cpu":
        return device
    return str(state.device)


def shard_of(state, items: list) -> list:
    """This rank's contiguous block of ``items`` (accelerate's split; all of them without a launch)."""
    if state is None:
        return list(items)
    with state.split_between_processes(list(items)) as mine:
        return list(mine)


def part_path(out: Path, rank: int, world: int) -> Path:
    """``preds.jsonl`` -> ``preds.part-R-of-N.jsonl`` (the file rank R of N appends to)."""
    return out.with_name(f"{out.stem}.part-{rank}-of-{world}{out.suffix}")


def part_files(out: Path) -> list[Path]:
    """Every part file of ``out`` that pancapchain wrote (it has its marker), any world size, sorted."""
    found = []
    for path in out.parent.glob(f"{out.stem}.part-*-of-*{out.suffix}"):
        name = path.name[: len(path.name) - len(out.suffix)] if out.suffix else path.name
        if PART_RE.search(name) and has_marker(path):
            check_resumable(path)  # an edited part is refused (one line naming it), never merged
            found.append(path)
    return sorted(found)


class ShardedOutput:
    """One rank's share of a resumable JSONL output; the one-process case is world size 1 on ``out`` itself."""

    def __init__(self, out: str | Path, command: str, state=None):
        self.out = Path(out)
        self.command = command
        self.state = state
        self.rank = state.process_index if state else 0
        self.world = state.num_processes if state else 1
        self.path = self.out if self.world == 1 else part_path(self.out, self.rank, self.world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def shard(self, ids: list[str]) -> tuple[list[int], int]:
        """Indices into ``ids`` (input order) this rank still has to write, and how many of its shard are done.

        Rank 0 first cuts a partial last line of ``out`` and claims it; every rank then reads the rows already
        in ``out`` and in any part file; nobody appends before all have read (a barrier).
        """
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            done = finished_ids(self.out, self.command)
        self._barrier()
        if not self.is_main:
            done = set(complete_rows(self.out))
        if self.path != self.out:
            done |= finished_ids(self.path, self.command)
        for part in part_files(self.out):
            done |= set(complete_rows(part))
        mine = shard_of(self.state, list(range(len(ids))))
        self._barrier()
        todo = [i for i in mine if ids[i] not in done]
        return todo, len(mine) - len(todo)

    def finish(self, ids: list[str], summary: dict[str, Any]) -> list[dict[str, Any]] | None:
        """After the barrier: rank 0 merges the parts in input order and gets every rank's summary; others None."""
        summaries = [summary]
        if self.state is not None:
            from accelerate.utils import gather_object

            summaries = gather_object([summary])
            self._barrier()
        if not self.is_main:
            return None
        self.merge(ids)
        return summaries

    def merge(self, ids: list[str]) -> int:
        """Append to ``out`` the part rows it lacks (input order first, then any other id), then remove the parts.

        Returns the number of rows appended. Killed midway, a rerun merges again without duplicates.
        """
        parts = part_files(self.out)
        if not parts:
            return 0
        present = set(complete_rows(self.out))
        rows: dict[str, bytes] = {}
        for part in parts:
            for row_id, line in complete_rows(part).items():
                rows.setdefault(row_id, line)
        wanted = dict.fromkeys(ids)
        order = [i for i in wanted if i in rows] + [i for i in rows if i not in wanted]
        lines = [rows[i] for i in order if i not in present]
        append_lines(self.out, lines)
        for part in parts:
            part.unlink()
            marker_path(part).unlink(missing_ok=True)
        return len(lines)


def run_sharded(out: str | Path, command: str, ids: list[str], state,
                work: Callable[[list[int], Path], dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Run ``work(indices, path)`` on this rank's unfinished share of ``ids``, then merge on rank 0.

    ``work`` appends one row per finished index to ``path`` and returns its summary (it gets ``"already_done"``
    added). Returns every rank's summary on rank 0, None on the others.
    """
    sharded = ShardedOutput(out, command, state)
    todo, already = sharded.shard(ids)
    summary = work(todo, sharded.path)
    summary["already_done"] = already
    return sharded.finish(ids, summary)
