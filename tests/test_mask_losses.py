"""BCE / Dice on hand-made masks, mask pooling, and MECL (hand reference, aligned < shuffled, gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from pancapchain.mask import (
    MaskHead,
    MaskHeadConfig,
    dice_loss,
    mecl_loss,
    pool_mask_embeddings,
    sigmoid_bce_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------------ BCE / Dice


def test_bce_matches_hand_computed_2x2_values():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x); mean over the 4 pixels, then over the 2 masks.
    first = (softplus(0.0) + softplus(2.0) + softplus(-1.0) + softplus(0.0)) / 4  # 0.956621
    second = math.log(2.0)
    assert first == pytest.approx(0.956621, abs=1e-6)
    assert float(sigmoid_bce_loss(logits[:1], targets[:1])) == pytest.approx(first, abs=1e-6)
    assert float(sigmoid_bce_loss(logits, targets)) == pytest.approx((first + second) / 2, abs=1e-6)
    assert float(sigmoid_bce_loss(logits, targets.bool())) == pytest.approx((first + second) / 2, abs=1e-6)


def test_dice_hand_computed_perfect_and_inverted():
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # p = 0.5 everywhere: 1 - (2 * 0.5 + 1) / (2.0 + 1 + 1) = 0.5
    assert float(dice_loss(torch.zeros(1, 2, 2), target)) == pytest.approx(0.5, abs=1e-6)
    masks = torch.zeros(2, 16, 16)
    masks[0, 3:9, 4:12] = 1.0
    masks[1, 10:, :5] = 1.0
    perfect = torch.where(masks.bool(), 20.0, -20.0)
    assert float(dice_loss(perfect, masks)) < 1e-3
    assert float(dice_loss(-perfect, masks)) > 0.99
    # inverted on the 2x2 example: 1 - (0 + 1) / (3 + 1 + 1) = 0.8 (eps keeps it off exactly 1)
    assert float(dice_loss(torch.tensor([[[-20.0, 20.0], [20.0, 20.0]]]), target)) == pytest.approx(
        0.8, abs=1e-6
    )
    # empty target + empty prediction costs nothing
    assert float(dice_loss(torch.full((1, 4, 4), -20.0), torch.zeros(1, 4, 4))) < 1e-6
    assert float(sigmoid_bce_loss(perfect, masks)) < 1e-6


def test_no_masks_gives_zero_attached_to_the_graph():
    logits = torch.zeros(0, 8, 8, requires_grad=True)
    for loss_fn in (sigmoid_bce_loss, dice_loss):
        loss = loss_fn(logits, torch.zeros(0, 8, 8))
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        loss.backward()


def test_losses_reject_unaligned_targets():
    with pytest.raises(ValueError, match="resize"):
        dice_loss(torch.zeros(2, 8, 8), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="N, H, W"):
        sigmoid_bce_loss(torch.zeros(8, 8), torch.zeros(8, 8))


def test_pool_mask_embeddings_is_the_sigmoid_weighted_pixel_mean():
    feats = torch.arange(8.0).reshape(2, 2, 2)  # D = 2 channels on a 2x2 grid
    logits = torch.stack([torch.tensor([[30.0, -30.0], [-30.0, -30.0]]), torch.zeros(2, 2)])
    pooled = pool_mask_embeddings(feats, logits)
    torch.testing.assert_close(pooled, torch.tensor([[0.0, 4.0], [1.5, 5.5]]), atol=1e-5, rtol=0)
    assert pool_mask_embeddings(feats, torch.zeros(0, 2, 2)).shape == (0, 2)
    with pytest.raises(ValueError, match="one grid"):
        pool_mask_embeddings(feats, torch.zeros(1, 3, 3))


# ------------------------------------------------------------------------------------------------------ MECL


def reference_mecl(masks, words, positives, tau, tau_g):
    """Loop-by-loop MECL on plain floats (same definition as the docstrings), for comparison."""

    def norm(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def lse(xs):
        top = max(xs)
        return top + math.log(sum(math.exp(x - top) for x in xs))

    def nce(sim, pos):
        terms = [
            lse(row) - lse([s for s, p in zip(row, prow) if p]) for row, prow in zip(sim, pos) if any(prow)
        ]
        return sum(terms) / len(terms)

    def soft_match(sim):
        rows = []
        for row in sim:
            weights = [math.exp(s / tau_g) for s in row]
            rows.append(sum(w * s for w, s in zip(weights, row)) / sum(weights))
        return sum(rows) / len(rows)

    m = [[norm(v) for v in img] for img in masks]
    w = [[norm(v) for v in img] for img in words]
    intra = []
    for mi, wi, pi in zip(m, w, positives):
        sim = [[dot(a, b) / tau for b in wi] for a in mi]
        sim_t = [list(col) for col in zip(*sim)]
        pos_t = [list(col) for col in zip(*pi)]
        intra.append(0.5 * (nce(sim, pi) + nce(sim_t, pos_t)))
    size = len(m)
    g_mw = [[soft_match([[dot(a, b) for b in w[j]] for a in m[i]]) for j in range(size)] for i in range(size)]
    g_wm = [[soft_match([[dot(a, b) for b in m[j]] for a in w[i]]) for j in range(size)] for i in range(size)]

    def ce(g):
        return sum(lse([x / tau for x in row]) - row[i] / tau for i, row in enumerate(g)) / size

    return sum(intra) / len(intra), 0.5 * (ce(g_mw) + ce(g_wm))


def test_mecl_matches_the_loop_reference():
    torch.manual_seed(0)
    masks = [torch.randn(2, 4), torch.randn(3, 4)]
    words = [torch.randn(3, 4), torch.randn(4, 4)]
    positives = [
        torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool),
        torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool),  # 3rd mask: no word
    ]
    out = mecl_loss(masks, words, positives, tau=0.5, tau_g=0.3, inter_weight=2.0)
    intra, inter = reference_mecl(
        [x.tolist() for x in masks], [x.tolist() for x in words], [p.tolist() for p in positives], 0.5, 0.3
    )
    assert float(out["mecl_intra"]) == pytest.approx(intra, abs=1e-5)
    assert float(out["mecl_inter"]) == pytest.approx(inter, abs=1e-5)
    assert float(out["mecl"]) == pytest.approx(intra + 2.0 * inter, abs=1e-5)


def aligned_batch(seed: int = 0, images: int = 4, entities: int = 3, dim: int = 16):
    """Words of each image; mask k sits near the mean of its two words (2k, 2k + 1)."""
    gen = torch.Generator().manual_seed(seed)
    words = [torch.randn(2 * entities, dim, generator=gen) for _ in range(images)]
    masks = [
        w.reshape(entities, 2, dim).mean(1) + 0.1 * torch.randn(entities, dim, generator=gen) for w in words
    ]
    positives = [
        torch.arange(2 * entities)[None, :] // 2 == torch.arange(entities)[:, None] for _ in range(images)
    ]
    return masks, words, positives


def test_mecl_is_lower_for_aligned_than_for_shuffled_embeddings():
    masks, words, positives = aligned_batch()
    aligned = mecl_loss(masks, words, positives)
    within = mecl_loss([m.roll(1, dims=0) for m in masks], words, positives)  # masks swapped inside images
    across = mecl_loss(masks[1:] + masks[:1], words, positives)  # each image paired with another caption
    assert float(aligned["mecl_intra"]) < 0.1 < float(within["mecl_intra"])
    assert float(aligned["mecl_intra"]) < float(across["mecl_intra"])
    assert float(aligned["mecl_inter"]) < float(across["mecl_inter"])
    assert float(aligned["mecl"]) < min(float(within["mecl"]), float(across["mecl"]))


def test_mecl_gradients_reach_masks_and_words():
    masks, words, positives = aligned_batch(seed=1)
    masks = [m.clone().requires_grad_(True) for m in masks]
    words = [w.clone().requires_grad_(True) for w in words]
    out = mecl_loss([m.roll(1, dims=0) for m in masks], words, positives)
    out["mecl"].backward()
    assert all(float(t.grad.abs().sum()) > 0 for t in masks + words)


def test_mecl_through_the_head_reaches_pixels_queries_and_word_projection():
    torch.manual_seed(0)
    head = MaskHead(MaskHeadConfig(hidden_size=8, vision_size=4, grid=2, dim=8, upsample=1, word_proj=True))
    feats, logits = head.forward_features(torch.randn(2, 4, 4), [torch.randn(2, 8), torch.randn(3, 8)])
    pooled = [pool_mask_embeddings(feats[b], logits[b]) for b in range(2)]
    words = [head.word_embeddings(torch.randn(3, 8)), head.word_embeddings(torch.randn(4, 8))]
    assert words[0].shape == (3, 8)
    positives = [torch.eye(2, 3, dtype=torch.bool), torch.eye(3, 4, dtype=torch.bool)]
    mecl_loss(pooled, words, positives)["mecl"].backward()
    assert float(head.pixel_decoder.layers[0].weight.grad.abs().sum()) > 0
    assert float(head.query_mlp[0].weight.grad.abs().sum()) > 0
    assert float(head.word_proj.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="word_proj=True"):
        MaskHead(MaskHeadConfig(hidden_size=8, vision_size=4, grid=2)).word_embeddings(torch.randn(1, 8))


def test_mecl_skips_empty_images_and_needs_two_for_inter():
    masks, words, positives = aligned_batch(images=2)
    base = mecl_loss(masks, words, positives)
    with_empty = mecl_loss(
        masks + [torch.zeros(0, 16)],
        words + [torch.randn(5, 16)],
        positives + [torch.zeros(0, 5, dtype=torch.bool)],
    )
    for key in ("mecl_intra", "mecl_inter", "mecl"):
        assert float(with_empty[key]) == pytest.approx(float(base[key]), abs=1e-6)
    single = mecl_loss([masks[0].requires_grad_(True)], words[:1], positives[:1])
    assert float(single["mecl_inter"].detach()) == 0.0 and single["mecl_inter"].requires_grad
    assert float(single["mecl"].detach()) == pytest.approx(float(single["mecl_intra"].detach()))
    nothing = mecl_loss([torch.zeros(0, 16)], [torch.randn(3, 16)], [torch.zeros(0, 3, dtype=torch.bool)])
    assert float(nothing["mecl"]) == 0.0


def test_mecl_rejects_inconsistent_inputs():
    masks, words, positives = aligned_batch(images=2)
    with pytest.raises(ValueError, match="one entry per image"):
        mecl_loss(masks, words[:1], positives)
    with pytest.raises(ValueError, match="image 1: positives"):
        mecl_loss(masks, words, [positives[0], positives[1][:, :-1]])
