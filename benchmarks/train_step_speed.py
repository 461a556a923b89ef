"""Seconds per training step of the tiny recipe: what the step spends outside the model, side by side.

    .venv/bin/python benchmarks/train_step_speed.py [--scenes 200] [--steps 60]

Run it alone on the machine. Builds the tiny recipe (recipes/tiny_chain.yaml, random tiny base) on synthetic
scenes and times, on the same rows in one run:
  1. the collator with the token ids the dataset stores vs tokenizing (chat template + tokenizer) every step;
  2. forward + backward + AdamW step with the recipe's system text ("") vs LLaVA-1.5's default one;
  3. the same step with logits from the first supervised position on (the trainer's) vs logits everywhere;
  4. box features read from the location tokens' bins (the hook's) vs from each group's decoded text;
  5. the mask head run on the rows that have masks (MaskLoss's) vs on every row of the batch;
and prints each pair as ms per step and as a ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pancapchain.config import load_recipe
from pancapchain.data.synth import write_dataset
from pancapchain.mask.losses import dice_loss, sigmoid_bce_loss
from pancapchain.mask.supervision import MaskLoss
from pancapchain.model.box_features import BoxFeatures
from pancapchain.model.outputs import image_features_of
from pancapchain.train import trainer as trainer_module
from pancapchain.train.run import build_run


def _run(data: Path, out: Path, system: str, batch_size: int):
    overrides = [f"data.train={data / 'train.jsonl'}", f"train.output_dir={out}", "data.val=''",
                 f"data.system_prompt={system}", f"train.per_device_batch_size={batch_size}"]
    return build_run(load_recipe("recipes/tiny_chain.yaml", overrides))


def collate_ms(run, batches: list[list[dict]], stored_ids: bool) -> float:
    drop = () if stored_ids else ("prompt_ids", "answer_ids")
    rows = [[{k: v for k, v in row.items() if k not in drop} for row in batch] for batch in batches]
    start = time.perf_counter()
    for batch in rows:
        run.trainer.data_collator(batch)
    return (time.perf_counter() - start) / len(rows) * 1000


def step_ms(run, batches: list[list[dict]]) -> float:
    """Mean ms of forward + backward + optimizer step (the first 5 steps are warm-up, not timed)."""
    trainer, model = run.trainer, run.trainer.model
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collated = [trainer.data_collator(batch) for batch in batches]
    for i, batch in enumerate(collated):
        if i == 5:
            start = time.perf_counter()
        trainer.compute_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / (len(collated) - 5) * 1000


def every_row_mask_loss(self: MaskLoss, outputs, batch: dict) -> dict:
    """The reference for 5: MaskLoss with the head run on every row (rows without masks add nothing)."""
    states = self.final_states.take()
    positions, n_rows = batch["mask_positions"], states.shape[0]
    per_row = [states[b, positions[positions[:, 0] == b, 1]] for b in range(n_rows)]
    boxes = [batch["mask_boxes"][positions[:, 0] == b] for b in range(n_rows)]
    pixels = batch["pixel_values"] if self.head.cfg.pixel_skip else None
    feats, logits = self.head.forward_features(image_features_of(outputs, n_rows), per_row, boxes, pixels)
    all_logits, target = torch.cat(logits), batch["mask_targets"]
    return {"mask_bce": self.weights["bce"] * sigmoid_bce_loss(all_logits, target),
            "mask_dice": self.weights["dice"] * dice_loss(all_logits, target),
            "mecl": self.weights["mecl"] * self._mecl(states, feats, logits, torch.arange(n_rows), batch)}


def patched_step_ms(run, batches, owner, name: str, replacement) -> float:
    """step_ms with ``owner.name`` replaced for the measurement."""
    kept = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        return step_ms(run, batches)
    finally:
        setattr(owner, name, kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, args.scenes, 0, seed=0, size=64, progress=False)
        systems = {"none": '""', "default": "default"}  # recipe override values
        runs = {name: _run(data, Path(tmp) / name, value, 2) for name, value in systems.items()}
        bare = runs["none"]
        n = min(len(bare.train_ds), 2 * (args.steps + 5))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        batches = {s: [[r.train_ds[i] for i in order[k:k + 2]] for k in range(0, n - 1, 2)] for s, r in runs.items()}
        with_ids, tokenizing = collate_ms(bare, batches["none"], True), collate_ms(bare, batches["none"], False)
        print(f"collate: stored ids {with_ids:.2f} ms/step, tokenizing every step {tokenizing:.2f} ms/step "
              f"(x{tokenizing / with_ids:.2f})")
        tokens = {s: sum(len(row["prompt_ids"]) + len(row["answer_ids"]) for b in bs for row in b) / (2 * len(bs))
                  for s, bs in batches.items()}
        none, default = step_ms(runs["none"], batches["none"]), step_ms(runs["default"], batches["default"])
        kept = trainer_module.first_scored_position
        trainer_module.first_scored_position = lambda labels: 0  # logits at every position
        full = step_ms(runs["none"], batches["none"])
        trainer_module.first_scored_position = kept
        print(f"step: logits from the first supervised position {none:.1f} ms, at every position {full:.1f} ms: "
              f"x{full / none:.2f}")
        print(f"step: no system text {none:.1f} ms ({tokens['none']:.0f} tokens/row), LLaVA-1.5 system text "
              f"{default:.1f} ms ({tokens['default']:.0f} tokens/row): x{default / none:.2f}")

        text = patched_step_ms(bare, batches["none"], BoxFeatures, "_location_bins", lambda self, ids: ids * 0 - 1)
        print(f"step: box features from location-token bins {none:.1f} ms, from decoded text {text:.1f} ms: "
              f"x{text / none:.2f}")
        every_row = patched_step_ms(bare, batches["none"], MaskLoss, "__call__", every_row_mask_loss)
        print(f"step: mask head on the rows with masks {none:.1f} ms, on every row {every_row:.1f} ms: "
              f"x{every_row / none:.2f}")


if __name__ == "__main__":
    main()
