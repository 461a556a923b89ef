"""train.loc_label_sigma: location tokens trained against a Gaussian over the ordered bins."""

from __future__ import annotations

import math

import pytest
import torch

from pancapchain.config import ConfigError, load_recipe
from pancapchain.train.trainer import token_losses

V, LOC = 12, torch.arange(4, 12)  # 8 location tokens: ids 4..11 are <loc_0>..<loc_7>


def test_soft_targets_touch_only_location_labels_and_reduce_to_one_hot():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, V)
    labels = torch.tensor([[-100, 2, 7, 11, -100]])  # next-token labels: a word, <loc_3>, <loc_7>
    hard, mask = token_losses(logits, labels)
    soft, soft_mask = token_losses(logits, labels, LOC, 1.0)
    assert torch.equal(mask, soft_mask)
    assert soft[0, 0] == hard[0, 0]  # the word keeps its one-hot loss
    assert not torch.allclose(soft[0, 1:3], hard[0, 1:3])
    assert torch.allclose(token_losses(logits, labels, LOC, 1e-4)[0], hard, atol=1e-5)

    log_p = logits[0, 1].log_softmax(-1)[LOC]  # position 1 predicts label 2, <loc_3>
    q = torch.tensor([math.exp(-0.5 * (j - 3) ** 2) for j in range(8)])
    assert soft[0, 1].item() == pytest.approx(-(q / q.sum() * log_p).sum().item(), rel=1e-5)


def test_a_near_miss_costs_less_than_a_far_one():
    labels = torch.tensor([[-100, 7]])  # <loc_3>
    def loss_when_predicting(loc: int) -> float:
        logits = torch.full((1, 2, V), -10.0)
        logits[0, 0, 4 + loc] = 10.0
        return token_losses(logits, labels, LOC, 1.0)[0][0, 0].item()
    assert loss_when_predicting(3) < loss_when_predicting(4) < loss_when_predicting(7)


def test_sigma_needs_location_tokens():
    with pytest.raises(ConfigError, match="loc_label_sigma"):
        load_recipe("recipes/tiny_chain.yaml", ["data.box_format=asmv2", "train.loc_label_sigma=1.0"])
    with pytest.raises(ConfigError, match="loc_label_sigma"):
        load_recipe("recipes/tiny_chain.yaml", ["train.loc_label_sigma=-1"])
    assert load_recipe("recipes/tiny_chain.yaml", ["train.loc_label_sigma=1.0"]).train.loc_label_sigma == 1.0
