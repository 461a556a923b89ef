"""Pinned losses: 3 deterministic CPU steps of the tiny chain recipe (mask head on) with grad accumulation 2.

The values were recorded before the trainer's auxiliary-loss protocol was introduced (issue 14) and must not
move: a change in how the LM loss is normalised over the accumulated batch, how auxiliary losses are scaled,
or how per-stage losses are averaged shows up here as a different number, not as a slower-learning demo.
"""

from __future__ import annotations

import pytest
from conftest import recorded_scene_scale

from pancapchain.config import load_recipe
from pancapchain.data.synth import write_dataset
from pancapchain.train.run import build_run

# Logged per optimizer step (logging_steps=1); the Trainer and PancapTrainer round to 4 decimals.
PINNED = [
    {"loss": 8.033710479736328, "grad_norm": 13.033507347106934, "loss_localize": 6.7609, "loss_discover": 6.559,
     "loss_caption": 6.6536, "mask_bce": 0.8524, "mask_dice": 0.2015, "mecl": 0.3167},
    {"loss": 7.355491638183594, "grad_norm": 11.362571716308594, "loss_localize": 6.5969, "loss_discover": 6.6437,
     "loss_caption": 6.6571, "mask_bce": 0.3737, "mask_dice": 0.1469, "mecl": 0.1926},
    {"loss": 6.438263893127441, "grad_norm": 4.363417148590088, "loss_localize": 6.4248, "loss_label": 6.4351,
     "loss_discover": 6.4638, "mask_bce": 0.0, "mask_dice": 0.0, "mecl": 0.0},
]

OVERRIDES = {
    "train.max_seconds": "0",
    "train.max_steps": "3",
    "train.per_device_batch_size": "2",
    "train.grad_accum": "2",
    "train.logging_steps": "1",
    "train.report_to": "[]",
    "train.group_by_length": "false",
    "train.resume": "never",
    "train.save_steps": "1000",
    "data.max_length": "512",
    # the recipe's settings when the values were recorded (its later tuning must not move the pin)
    "model.tiny.vision_feature_layer": "-2",
    "model.freeze_vision_tower": "false",
    "train.learning_rate": "2.0e-3",
    "train.projector_lr": "2.0e-3",
    "data.system_prompt": "default",
    "data.box_features": "false",
    "data.label_answer": "tag_first",
    "data.caption_mentions": "tag_first",
    "data.box_feature_span": "0",
    "data.stage_rates.discover": "null",
    "mask.stages": "[caption,direct]",
    "mask.pixel_skip": "0",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned")
    with recorded_scene_scale():
        write_dataset(root, 4, 0, seed=5, size=64, progress=False)
    return root


def step_logs(synth, out) -> list[dict[str, float]]:
    overrides = {**OVERRIDES, "data.train": str(synth / "train.jsonl"), "train.output_dir": str(out)}
    cfg = load_recipe("recipes/tiny_chain.yaml", [f"{k}={v}" for k, v in overrides.items()])
    cfg.data.val = ""  # no eval: only the training steps are pinned
    run = build_run(cfg)
    run.trainer.train()
    keep = ("loss", "grad_norm")
    return [
        {k: v for k, v in h.items() if k in keep or k.startswith(("loss_", "mask_", "mecl"))}
        for h in run.trainer.state.log_history
        if "loss" in h
    ]


def test_three_accumulated_steps_give_the_recorded_losses(synth, tmp_path, one_thread):
    logs = step_logs(synth, tmp_path / "out")
    assert len(logs) == 3
    assert [sorted(h) for h in logs] == [sorted(p) for p in PINNED]
    for got, want in zip(logs, PINNED):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=2e-4), key
