"""Mask-head losses as pure functions: sigmoid BCE, Dice, and SGDiff's Multi-Entities Contrastive Loss.

Shapes: ``logits``/``targets`` are ``(N, H, W)`` with the targets already in the logits' frame and size
(see :func:`pancapchain.mask.rle.masks_to_square`); targets are 0/1 (bool or float; soft values work).
Reductions: every per-mask loss is first reduced over the mask's pixels, then averaged over the N masks.
Pass all masks of a batch stacked into one ``(N, H, W)`` tensor to get LISA's "sum over masks / number of
masks in the batch". With N = 0 the losses are ``0.0 * logits.sum()``: zero, but attached to the graph.

MECL (arXiv 2512.01975 eq. 10-12; the temperatures are ours and configurable): intra-sample multi-
positive InfoNCE between the mask embeddings and the word embeddings of one image, in both directions,
plus an inter-sample InfoNCE over the batch on the soft-max weighted matching score g. The mask side
should be a *visual* embedding (:func:`pool_mask_embeddings`), not the query derived from the word's own
hidden state, or the contrast is trivial.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"mask logits must be (N, H, W), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} must match logits {tuple(logits.shape)} (resize first)"
        )


def sigmoid_bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on sigmoid(logits): mean over each mask's pixels, then mean over masks -> scalar."""
    _check_pair(logits, targets)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return per_pixel.flatten(1).mean(1).mean()


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice: per mask ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)`` with p = sigmoid(logits),
    then mean over masks -> scalar. ``eps = 1`` (Mask2Former's smoothing) makes an empty target with an
    empty prediction cost 0 and keeps a perfect prediction at ~0 (sigmoid(+-20) gives < 1e-6)."""
    _check_pair(logits, targets)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    probs = logits.float().sigmoid().flatten(1)
    tgt = targets.float().flatten(1)
    numerator = 2.0 * (probs * tgt).sum(1) + eps
    denominator = probs.sum(1) + tgt.sum(1) + eps
    return (1.0 - numerator / denominator).mean()


def pool_mask_embeddings(pixel_feats: Tensor, mask_logits: Tensor, eps: float = 1e-6) -> Tensor:
    """Visual embedding of each mask: the sigmoid(mask)-weighted mean of the per-pixel features.

    pixel_feats ``(D, S, S)``, mask_logits ``(K, S, S)`` -> ``(K, D)`` (not normalized; K = 0 -> (0, D)).
    Gradients flow into both the features and the mask logits, so MECL also shapes the masks.
    """
    if pixel_feats.dim() != 3 or mask_logits.dim() != 3 or pixel_feats.shape[1:] != mask_logits.shape[1:]:
        raise ValueError(
            f"need pixel_feats (D, S, S) and mask_logits (K, S, S) on one grid, got "
            f"{tuple(pixel_feats.shape)} and {tuple(mask_logits.shape)}"
        )
    weights = mask_logits.float().sigmoid().flatten(1)  # (K, S*S)
    feats = pixel_feats.float().flatten(1)  # (D, S*S)
    return (weights @ feats.T) / (weights.sum(1, keepdim=True) + eps)


def _multi_positive_nce(sim: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows that have a positive of ``-(logsumexp(sim[r, pos]) - logsumexp(sim[r, :]))``; sim (R, C)."""
    rows = positives.any(1)
    if not rows.any():
        return sim.sum() * 0.0
    sim, positives = sim[rows], positives[rows]
    pos_lse = sim.masked_fill(~positives, float("-inf")).logsumexp(1)
    return (sim.logsumexp(1) - pos_lse).mean()


def intra_sample_loss(masks: Tensor, words: Tensor, positives: Tensor, tau: float | Tensor) -> Tensor:
    """Eq. 10 for one image: masks (K, D) and words (L, D) L2-normalized, positives (K, L) bool -> scalar.

    Mask -> words: each mask with a positive word, softmax over the image's L words; words -> mask: each word
    with a positive mask, softmax over the K masks; the two directions are averaged. A row's positives are
    pooled with logsumexp (MIL-NCE) so any word of a multi-token phrase may carry the match.
    """
    sim = masks @ words.T / tau  # (K, L)
    return 0.5 * (_multi_positive_nce(sim, positives) + _multi_positive_nce(sim.T, positives.T))


def matching_scores(masks: list[Tensor], words: list[Tensor], tau_g: float) -> tuple[Tensor, Tensor]:
    """Eq. 11 for every (image i, caption j) pair of the batch, both ways; inputs L2-normalized.

    Returns ``(g_mw, g_wm)``, each ``(B, B)``:
    ``g_mw[i, j] = mean_k sum_l softmax_l(<m_ik, s_jl> / tau_g) <m_ik, s_jl>`` (each mask of image i finds its
    words in caption j) and ``g_wm[i, j] = mean_l sum_k softmax_k(<s_il, m_jk> / tau_g) <s_il, m_jk>`` (each
    word of caption i finds its masks in image j; the paper's eq. 11). tau_g -> 0 is max matching, -> inf the mean.
    """
    size = len(masks)
    rows_mw, rows_wm = [], []
    for i in range(size):
        mw, wm = [], []
        for j in range(size):
            sim_ij = masks[i] @ words[j].T  # (K_i, L_j)
            mw.append(_soft_max_weighted(sim_ij, tau_g))
            wm.append(_soft_max_weighted(words[i] @ masks[j].T, tau_g))
        rows_mw.append(torch.stack(mw))
        rows_wm.append(torch.stack(wm))
    return torch.stack(rows_mw), torch.stack(rows_wm)


def _soft_max_weighted(sim: Tensor, tau_g: float) -> Tensor:
    """``mean_r sum_c softmax_c(sim[r] / tau_g) * sim[r, c]`` for sim (R, C) -> scalar."""
    return ((sim / tau_g).softmax(1) * sim).sum(1).mean()


def inter_sample_loss(masks: list[Tensor], words: list[Tensor], tau: float | Tensor, tau_g: float) -> Tensor:
    """Eq. 12: InfoNCE over the batch, image -> captions on ``g_mw`` and caption -> images on ``g_wm``
    (the matched pair is the diagonal; the denominator includes it), averaged; needs >= 2 images."""
    g_mw, g_wm = matching_scores(masks, words, tau_g)
    target = torch.arange(len(masks), device=g_mw.device)
    return 0.5 * (F.cross_entropy(g_mw / tau, target) + F.cross_entropy(g_wm / tau, target))


def _check_mecl_inputs(mask_embeds: list[Tensor], word_embeds: list[Tensor], positives: list[Tensor]) -> None:
    if not (len(mask_embeds) == len(word_embeds) == len(positives)):
        raise ValueError(
            f"mecl_loss needs one entry per image in each list, got {len(mask_embeds)} mask, "
            f"{len(word_embeds)} word and {len(positives)} positive entries"
        )
    for b, (m, w, p) in enumerate(zip(mask_embeds, word_embeds, positives)):
        if m.dim() != 2 or w.dim() != 2 or m.shape[1] != w.shape[1]:
            raise ValueError(
                f"image {b}: need mask (K, D) and word (L, D) embeddings, got {tuple(m.shape)}, {tuple(w.shape)}"
            )
        if tuple(p.shape) != (m.shape[0], w.shape[0]):
            raise ValueError(
                f"image {b}: positives must be (K, L) = {(m.shape[0], w.shape[0])}, got {tuple(p.shape)}"
            )


def mecl_loss(
    mask_embeds: list[Tensor],
    word_embeds: list[Tensor],
    positives: list[Tensor],
    tau: float | Tensor = 0.07,
    tau_g: float = 0.1,
    inter_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Multi-Entities Contrastive Loss over a batch.

    Per image b: ``mask_embeds[b]`` (K_b, D) visual mask embeddings, ``word_embeds[b]`` (L_b, D) caption word
    embeddings, ``positives[b]`` (K_b, L_b) bool, True where word l belongs to the tag/phrase of mask k.
    Both sides are L2-normalized here. ``tau`` may be a learnable tensor (the paper learns it).

    Returns ``{"mecl_intra", "mecl_inter", "mecl"}`` scalars with ``mecl = intra + inter_weight * inter``.
    Intra is the mean over the images with at least one positive pair; inter runs over the images with
    K_b >= 1 and L_b >= 1 and is 0 when fewer than 2 exist; images with K_b = 0 are skipped by both. A
    zero part is ``0.0 * (sum of inputs)`` so it stays attached to the graph.
    """
    _check_mecl_inputs(mask_embeds, word_embeds, positives)
    zero = sum((t.float().sum() for t in (*mask_embeds, *word_embeds)), torch.zeros(())) * 0.0
    masks = [F.normalize(m.float(), dim=-1) for m in mask_embeds]
    words = [F.normalize(w.float(), dim=-1) for w in word_embeds]
    with_pairs = [b for b, p in enumerate(positives) if p.numel() and bool(p.any())]
    intra_parts = [intra_sample_loss(masks[b], words[b], positives[b].bool(), tau) for b in with_pairs]
    intra = torch.stack(intra_parts).mean() if intra_parts else zero
    non_empty = [b for b, p in enumerate(positives) if p.numel()]
    if len(non_empty) >= 2:
        inter = inter_sample_loss([masks[b] for b in non_empty], [words[b] for b in non_empty], tau, tau_g)
    else:
        inter = zero
    return {"mecl_intra": intra, "mecl_inter": inter, "mecl": intra + inter_weight * inter}
