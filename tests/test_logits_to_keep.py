"""The training loss reads logits only from the first supervised position on, and equals the full-logits loss."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides, write_dataset

from pancapchain.config import load_recipe
from pancapchain.constants import IGNORE_INDEX
from pancapchain.train import trainer as trainer_module
from pancapchain.train.run import build_run
from pancapchain.train.trainer import first_scored_position

X = IGNORE_INDEX


@pytest.mark.parametrize(("labels", "start"), [
    ([[X, X, 5, 6], [X, X, X, 7]], 1),   # one before the earliest supervised label of any row
    ([[X, X, X, 7]], 2),
    ([[4, 5, 6, 7]], 0),                 # position 0 supervised: nothing to skip
    ([[X, X, X, X]], 0),                 # nothing supervised: keep everything
])
def test_first_scored_position(labels, start):
    assert first_scored_position(torch.tensor(labels)) == start


def test_sliced_loss_equals_the_full_logits_loss(tmp_path, monkeypatch):
    train = write_dataset(tmp_path / "data", n=3)
    run = build_run(load_recipe(None, tiny_overrides(train, tmp_path / "out", **{"mask.enabled": "true"})))
    trainer, model = run.trainer, run.trainer.model
    batch = trainer.data_collator([run.train_ds[i] for i in range(4)])
    assert first_scored_position(batch["labels"]) > 64  # the image tokens alone are skipped
    calls = []
    real_forward = model.forward

    def spy(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls.append((kwargs.get("logits_to_keep", 0), out.logits.shape[1]))
        return out

    monkeypatch.setattr(model, "forward", spy)
    model.train()
    torch.manual_seed(0)
    sliced = trainer.compute_loss(model, dict(batch))
    monkeypatch.setattr(trainer_module, "first_scored_position", lambda labels: 0)
    torch.manual_seed(0)
    full = trainer.compute_loss(model, dict(batch))
    length = batch["input_ids"].shape[1]
    keep = length - first_scored_position(batch["labels"])
    assert calls == [(keep, keep), (0, length)]
    assert torch.allclose(sliced, full, rtol=1e-5, atol=1e-6)
    assert sliced.item() > 0
