"""Ctrl-C during training: a clean stop at a step boundary (complete checkpoint, exit 130, one line), and the
rerun announces that it resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides, write_dataset
from launch_util import stop_launch

from pancapchain.cli.preflight import safetensors_problem

REPO = Path(__file__).resolve().parents[1]


def _endless_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """(output dir, recipe, overrides) of a tiny run that only Ctrl-C ends (checkpoint every 2 steps)."""
    train = write_dataset(tmp_path / "data", n=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {base: tiny}\n")
    out = tmp_path / "run"
    overrides = tiny_overrides(train, out, **{"train.max_steps": "100000", "train.save_steps": "2",
                                              "train.per_device_batch_size": "1"})
    return out, recipe, overrides


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, seconds: float) -> bool:
    """True once a complete checkpoint exists. Any step's counts: on a fast machine checkpoint-2 can be saved
    and rotated away (save_total_limit) between two polls."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if any(out.glob("checkpoint-*/pancap_meta.json")):
            return True
        time.sleep(0.2)
    return any(out.glob("checkpoint-*/pancap_meta.json"))


def _popen_to_files(cmd: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """Start ``cmd`` with stdout/stderr in files under ``cwd``: a pipe nobody reads while the test waits fills
    up and blocks the child (seen as a hang once the machine got faster and the log longer)."""
    with (cwd / "stdout.txt").open("w") as stdout, (cwd / "stderr.txt").open("w") as stderr:
        return subprocess.Popen(cmd, cwd=cwd, stdout=stdout, stderr=stderr, text=True, env=env, start_new_session=True)


def _outputs(cwd: Path) -> tuple[str, str]:
    return (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()


@pytest.mark.timeout(2400)
def test_ctrl_c_stops_at_a_step_with_a_complete_checkpoint_and_the_rerun_resumes(tmp_path):
    out, recipe, overrides = _endless_run(tmp_path)
    cmd = [sys.executable, str(REPO / "train.py"), "--recipe", str(recipe), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = _popen_to_files(cmd, tmp_path, env)
    try:
        assert _wait_for_checkpoint(out, proc, 1500), "training never saved a checkpoint"
        proc.send_signal(signal.SIGINT)  # to the python process only, as a terminal's Ctrl-C would reach it
        proc.wait(timeout=600)
        stdout, stderr = _outputs(tmp_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("train.py: error: ")]
    step = int(line.split("after step ")[1].split()[0])
    checkpoint = out / f"checkpoint-{step}"
    assert f"checkpoint {checkpoint} is complete: rerun the same command to resume from it" in line
    for name in ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "pancap_meta.json"):
        assert (checkpoint / name).is_file(), name
    assert safetensors_problem(checkpoint / "adapter_model.safetensors") is None
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert not (out / "metrics.json").exists()  # the run did not pretend to finish

    rerun = [c if not c.startswith("train.max_steps=") else f"train.max_steps={step + 1}" for c in cmd]
    done = subprocess.run(rerun, cwd=tmp_path, capture_output=True, text=True, timeout=1500, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {checkpoint}" in done.stdout
    assert "train_runtime" in json.loads((out / "metrics.json").read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(2400)
def test_ctrl_c_under_a_two_process_launch_stops_every_rank_after_the_same_step(tmp_path):
    """``accelerate launch`` runs torch's elastic launcher in-process; a terminal's Ctrl-C reaches the launcher,
    which sends SIGINT to each rank. The ranks agree on one step, save one complete checkpoint and exit 130."""
    out, recipe, overrides = _endless_run(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(REPO / "train.py"), "--recipe", str(recipe), *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = _popen_to_files(cmd, tmp_path, env)
    try:
        assert _wait_for_checkpoint(out, proc, 1500), "training never saved a checkpoint"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
        _, stderr = _outputs(tmp_path)
    finally:
        stop_launch(proc)
    lines = [x for x in stderr.splitlines() if x.startswith("train.py: error: training stopped by Ctrl-C")]
    assert len(lines) == 1, stderr[-4000:]  # rank 0 says it; rank 1 stops with the same exit code, silently
    step = int(lines[0].split("after step ")[1].split()[0])
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints[-1] == step  # both ranks stopped after the same step: no later checkpoint was started
    checkpoint = out / f"checkpoint-{step}"
    assert safetensors_problem(checkpoint / "adapter_model.safetensors") is None
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert not (out / "metrics.json").exists()
    # the only traceback is the launcher's own report of the signal it received (torch's, not ours)
    assert stderr.count("Traceback") <= 1 and ("Traceback" not in stderr or "SignalException" in stderr), stderr[-4000:]
