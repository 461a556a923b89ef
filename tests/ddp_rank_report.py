"""One rank of tests/test_ddp_cpu.py: train the recipe given on the command line, then write what this rank holds.

Run under ``torch.distributed.run``; writes ``<out>/rank<r>.json`` with the accelerate distributed type, the wrapper
class, the optimizer steps, the last learning rate and a checksum of every trainable parameter.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from pancapchain.config import load_recipe
from pancapchain.train.run import build_run


def main(out: Path, overrides: list[str]) -> None:
    run = build_run(load_recipe(None, overrides))
    trainer = run.trainer
    trainer.train()
    trainable = [p.detach().double() for p in trainer.model.parameters() if p.requires_grad]
    report = {
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "wrapper": type(trainer.model_wrapped).__name__,
        "steps": trainer.state.global_step,
        "last_lr": trainer.lr_scheduler.get_last_lr()[0],
        "checksum": float(sum((p * torch.linspace(1, 2, p.numel()).view_as(p).double()).sum() for p in trainable)),
        "stopped_by": trainer.time_budget.end_report()["stopped_by"] if trainer.time_budget else None,
    }
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
