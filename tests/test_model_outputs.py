"""Image features read the same way from every transformers 5.x output shape (issue: 5.24 returns a list)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_overrides

from pancapchain.config import load_recipe
from pancapchain.data.synth import write_dataset
from pancapchain.model.outputs import batched_image_features, image_features_of, per_image_features
from pancapchain.train.run import build_run

FEATS = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # 2 images, 3 tokens, D = 4


@pytest.mark.parametrize(
    "shape_name, given",
    [
        ("tensor (N, T, D), transformers <= 5.23", FEATS),
        ("tensor (N*T, D), transformers <= 5.23", FEATS.reshape(6, 4)),
        ("list of (T, D), transformers 5.24", [FEATS[0], FEATS[1]]),
        ("tuple of (1, T, D)", (FEATS[0][None], FEATS[1][None])),
    ],
)
def test_every_shape_gives_the_same_per_image_features(shape_name, given):
    items = per_image_features(given, 2)
    assert [tuple(f.shape) for f in items] == [(3, 4), (3, 4)], shape_name
    assert torch.equal(batched_image_features(given, 2), FEATS), shape_name


def test_mismatched_counts_are_refused_with_the_numbers():
    with pytest.raises(ValueError, match="3 per-image feature tensors for 2 images"):
        per_image_features([FEATS[0]] * 3, 2)
    with pytest.raises(ValueError, match="do not split into 4 images"):
        per_image_features(FEATS.reshape(6, 4), 4)
    with pytest.raises(ValueError, match="different token counts"):
        batched_image_features([FEATS[0], FEATS[1][:2]], 2)


def test_output_objects_of_both_releases():
    old = SimpleNamespace(image_hidden_states=FEATS.reshape(6, 4))  # 5.23: one tensor, no image_outputs
    new = SimpleNamespace(image_outputs=SimpleNamespace(pooler_output=[FEATS[0], FEATS[1]]),
                          image_hidden_states=[FEATS[0], FEATS[1]])  # 5.24
    assert torch.equal(image_features_of(old, 2), FEATS)
    assert torch.equal(image_features_of(new, 2), FEATS)


def test_mask_loss_runs_on_the_installed_transformers(tmp_path):
    """The 5.24 regression: MaskLoss reshaped ``image_hidden_states``, a list there (AttributeError)."""
    write_dataset(tmp_path / "synth", 4, 1, seed=3, size=32, progress=False)
    overrides = tiny_overrides(tmp_path / "synth" / "train.jsonl", tmp_path / "out",
                               **{"mask.enabled": "true", "mask.dim": "16", "mask.upsample": "1"})
    run = build_run(load_recipe(None, overrides))
    batch = run.trainer.data_collator([run.train_ds[i] for i in range(4)])
    model = run.trainer.model
    model.train()
    parts = {}
    run.trainer.compute_loss(model, dict(batch))
    for aux in run.trainer.aux_losses:
        with aux.capture():
            outputs = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")})
        parts.update(aux(outputs, batch))
    assert {"mask_bce", "mask_dice"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())
