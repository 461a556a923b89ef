"""Ctrl-C during training: a clean stop at a step boundary (complete checkpoint, exit 130, one line), and the
rerun announces that it resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides, write_dataset

from pancapchain.cli.preflight import safetensors_problem

REPO = Path(__file__).resolve().parents[1]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.2)
    return path.exists()


@pytest.mark.timeout(2400)
def test_ctrl_c_stops_at_a_step_with_a_complete_checkpoint_and_the_rerun_resumes(tmp_path):
    train = write_dataset(tmp_path / "data", n=4)
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {base: tiny}\n")
    overrides = tiny_overrides(train, out, **{"train.max_steps": "100000", "train.save_steps": "2",
                                              "train.per_device_batch_size": "1"})
    cmd = [sys.executable, str(REPO / "train.py"), "--recipe", str(recipe), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        assert _wait_for(out / "checkpoint-2" / "pancap_meta.json", proc, 1500), "training never saved checkpoint-2"
        proc.send_signal(signal.SIGINT)  # to the python process only, as a terminal's Ctrl-C would reach it
        stdout, stderr = proc.communicate(timeout=600)
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
