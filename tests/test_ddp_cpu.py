"""Two ranks on CPU without DeepSpeed (``torchrun`` / ``accelerate launch`` with gloo) train one model together.

Before use_cpu and a static DDP graph, accelerate counted such a launch as one process: the model was never wrapped
in DistributedDataParallel and each rank trained its own copy (their parameters differed after 3 steps), and
with the wrapper the mask head's use outside the forward stopped DDP. The wall-clock budget takes rank 0's clock,
so the ranks also agree on the learning rate of every step and on the step that ends the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides, write_dataset
from launch_util import stop_launch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


@pytest.mark.timeout(TIMEOUT + 60)
def test_two_cpu_ranks_hold_the_same_trained_model_and_stop_on_the_same_step(tmp_path: Path):
    data = write_dataset(tmp_path / "data", n=6)
    overrides = tiny_overrides(data, tmp_path / "out", **{
        "train.per_device_batch_size": "1", "train.max_seconds": "4", "train.epochs": "1000",
        "train.save_total_limit": "1", "mask.enabled": "true", "mask.stages": "[localize,label,discover,caption]"})
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "ddp_rank_report.py"), str(tmp_path), *overrides]
    log = tmp_path / "launch.log"
    with open(log, "w") as sink:
        launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            returncode = launcher.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            stop_launch(launcher)
    assert returncode == 0, log.read_text(errors="replace")[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["distributed_type"] for r in ranks] == ["MULTI_CPU", "MULTI_CPU"]
    assert [r["wrapper"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert ranks[0]["stopped_by"] == ranks[1]["stopped_by"] == "wall_budget"
    assert ranks[0]["steps"] == ranks[1]["steps"] > 5
    assert ranks[0]["last_lr"] == ranks[1]["last_lr"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # exactly: the same gradients and learning rates

