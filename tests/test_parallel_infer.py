"""Data-parallel ``infer`` (pancapchain/infer/parallel.py): shards, part files, merge in input order, resume.

The launch tests run ``accelerate launch --multi_gpu --num_processes 2`` on CPU (torchrun + gloo; accelerate's
flag for a multi-process launch, with or without GPUs) on the tiny checkpoint and compare the merged JSONL,
byte for byte, with a one-process run; one of them SIGKILLs rank 1 midway and relaunches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import tiny_overrides, write_dataset

from pancapchain.infer.parallel import ShardedOutput, part_files, part_path
from pancapchain.infer.resume import append_line, marker_path

LAUNCH_TIMEOUT = 300  # two tiny-model ranks on 2 shared cores; the run itself takes seconds
COMMON = ["--batch-size", "1", "--max-new-tokens", "8"]


class FakeRank:
    """The part of accelerate's PartialState that ShardedOutput uses, for one rank driven by hand."""

    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes = rank, world

    def wait_for_everyone(self) -> None:
        pass

    @contextlib.contextmanager
    def split_between_processes(self, items: list):
        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        yield items[start : start + per + (self.process_index < extra)]


def _row(i: int) -> dict:
    return {"id": f"s{i}", "stages": {"localize": {"raw": f"r{i}"}}}


def test_parts_resume_and_merge_in_input_order(tmp_path):
    ids = [f"s{i}" for i in range(7)]
    out = tmp_path / "preds.jsonl"
    shards = [ShardedOutput(out, "infer", FakeRank(r, 2)) for r in range(2)]
    todo = [s.shard(ids) for s in shards]
    assert todo == [([0, 1, 2, 3], 0), ([4, 5, 6], 0)]
    assert [s.path.name for s in shards] == ["preds.part-0-of-2.jsonl", "preds.part-1-of-2.jsonl"]
    for i in todo[0][0]:
        append_line(shards[0].path, _row(i))
    append_line(shards[1].path, _row(4))  # rank 1 is killed after one row, in the middle of the next write
    with shards[1].path.open("a") as fh:
        fh.write('{"id": "s5", "sta')

    again = [ShardedOutput(out, "infer", FakeRank(r, 2)) for r in range(2)]
    todo = [s.shard(ids) for s in again]
    assert todo == [([], 4), ([5, 6], 1)]
    for i in todo[1][0]:
        append_line(again[1].path, _row(i))
    assert again[1].finish(ids, {}) is None  # only rank 0 merges
    assert again[0].finish(ids, {"n": 0}) == [{"n": 0}]
    assert out.read_text() == "".join(json.dumps(_row(i)) + "\n" for i in range(7))
    assert part_files(out) == [] and not any(marker_path(part_path(out, r, 2)).exists() for r in range(2))
    assert marker_path(out).is_file()
    assert ShardedOutput(out, "infer").shard(ids) == ([], 7)  # a one-process rerun has nothing left to do


def test_a_relaunch_with_another_world_size_skips_rows_of_the_old_parts(tmp_path):
    ids = [f"s{i}" for i in range(4)]
    out = tmp_path / "preds.jsonl"
    old = ShardedOutput(out, "infer", FakeRank(1, 2))
    old.shard(ids)
    append_line(old.path, _row(2))
    one = ShardedOutput(out, "infer")  # relaunched as one process
    todo, done = one.shard(ids)
    assert (todo, done) == ([0, 1, 3], 1)
    for i in todo:
        append_line(one.path, _row(i))
    one.finish(ids, {})
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ids
    assert part_files(out) == []


# --- real launches -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "pancapchain", *args]
    with log.open("w") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """The launcher and every rank it started (each in the launcher's session) are killed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _finish(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"launch did not finish in {LAUNCH_TIMEOUT} s:\n{log.read_text()[-3000:]}")
    finally:
        _stop(proc)


def _run_launch(args: list[str], log: Path) -> None:
    """Launch two ranks and wait; fail with the log's tail unless the launch exits 0."""
    assert _finish(_launch(args, log), log) == 0, log.read_text()[-3000:]


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and "pancapchain" in " ".join(child.cmdline()):
                return child
    return None


def _n_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def case(tiny_checkpoint, tmp_path_factory):
    """6 images and the one-process result (run in this process: the same code as the CLI)."""
    from pancapchain.cli.infer import generation_options
    from pancapchain.infer.batch import run_inference
    from pancapchain.infer.chain import PancapChain

    root = tmp_path_factory.mktemp("dp")
    data = write_dataset(root / "data", n=6)
    reference = root / "reference.jsonl"
    options = generation_options(argparse.Namespace(max_new_tokens=8, sample=False, temperature=1.0, top_p=1.0,
                                                    seed=0, stop_after=None))
    run_inference(PancapChain.from_pretrained(str(tiny_checkpoint)), data, reference, batch_size=1, options=options)
    return tiny_checkpoint, data, reference


@pytest.mark.timeout(LAUNCH_TIMEOUT + 60)
def test_two_processes_write_the_same_jsonl_as_one(case, tmp_path):
    model, data, reference = case
    out = tmp_path / "preds.jsonl"
    log = tmp_path / "launch.log"
    _run_launch(["infer", "--model", str(model), "--data", str(data), "--out", str(out), *COMMON], log)
    assert out.read_bytes() == reference.read_bytes()
    assert part_files(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "launch.log", "preds.jsonl", "preds.jsonl.pancapchain.json", "preds.summary.json"]
    assert "written 6, skipped 0, processes 2" in log.read_text()
    summary = json.loads((tmp_path / "preds.summary.json").read_text())
    assert (summary["images_total"], summary["written"], summary["processes"]) == (6, 6, 2)
    assert summary["plan"] == "chain" and summary["options"]["max_new_tokens"]["caption"] == 8  # the settings used


@pytest.mark.timeout(2 * LAUNCH_TIMEOUT + 60)
def test_a_killed_rank_resumes_without_duplicates_or_losses(case, tmp_path):
    model, data, reference = case
    out = tmp_path / "preds.jsonl"
    args = ["infer", "--model", str(model), "--data", str(data), "--out", str(out), *COMMON]
    proc = _launch(args, tmp_path / "first.log")
    part = part_path(out, 1, 2)
    try:
        deadline = time.time() + LAUNCH_TIMEOUT
        while _n_rows(part) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        victim = _rank_process(proc, 1)
        assert victim is not None, (tmp_path / "first.log").read_text()[-3000:]
        victim.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=LAUNCH_TIMEOUT) != 0  # torchrun stops the launch when a rank dies
    finally:
        _stop(proc)
    killed_at = _n_rows(part)
    assert 1 <= killed_at < 3 and not out.exists()  # rank 1 (images 3-5) was stopped midway, nothing merged
    _run_launch(args, tmp_path / "second.log")
    assert out.read_bytes() == reference.read_bytes()
    assert part_files(out) == []
    summary = json.loads((tmp_path / "preds.summary.json").read_text())
    assert summary["already_done"] >= killed_at and summary["already_done"] + summary["written"] == 6


@pytest.fixture(scope="module")
def ground_case(tmp_path_factory):
    """A tiny checkpoint with a mask head, 6 captioned images and their one-process ``ground --data`` result
    (computed on one thread, as each launched rank runs)."""
    import torch

    from pancapchain.config import load_recipe
    from pancapchain.infer.chain import PancapChain
    from pancapchain.infer.ground import ground_dataset
    from pancapchain.train.run import run_training

    root = tmp_path_factory.mktemp("ground_dp")
    data = write_dataset(root / "data", n=6)
    model = root / "run"
    mask = {"mask.enabled": "true", "mask.dim": "16", "mask.upsample": "1", "train.max_steps": "2"}
    run_training(load_recipe(None, tiny_overrides(data, model, **mask)))
    reference = root / "reference.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ground_dataset(PancapChain.from_pretrained(str(model)), data, reference)
    finally:
        torch.set_num_threads(threads)
    return model, data, reference


@pytest.mark.timeout(LAUNCH_TIMEOUT + 60)
def test_two_processes_ground_the_same_jsonl_as_one(ground_case, tmp_path):
    model, data, reference = ground_case
    out = tmp_path / "grounded.jsonl"
    _run_launch(["ground", "--model", str(model), "--data", str(data), "--out", str(out)], tmp_path / "launch.log")
    assert _n_rows(reference) == 6 and out.read_bytes() == reference.read_bytes()
    assert part_files(out) == []


def test_an_image_folder_keeps_one_item_per_id_and_reports_the_other(tmp_path: Path):
    """``a.png`` and ``a.jpg`` would both write id "a" (one row lost in the merge): the second is skipped, named."""
    from PIL import Image

    from pancapchain.data.io import SkipReport
    from pancapchain.infer.batch import list_items

    (tmp_path / "sub").mkdir()
    for name in ("a.png", "a.jpg", "sub/b.png", "notes.txt"):
        if name.endswith("txt"):
            (tmp_path / name).write_text("not an image")
        else:
            Image.new("RGB", (8, 8)).save(tmp_path / name)
    report = SkipReport()
    items = list_items(tmp_path, None, report)
    assert [(it.id, it.image) for it in items] == [("a", "a.jpg"), ("sub/b", "sub/b.png")]
    assert len(report.skipped) == 1 and report.skipped[0][0] == "a.png" and "already a.jpg" in report.skipped[0][1]

