"""Dense pretraining of the tiny vision tower on synthetic scenes: the stand-in for a pretrained CLIP.

A LLaVA user starts from a vision tower that already sees. The tiny base is random, and the chain recipe's
measurements (docs/learning_quality.md) found perception to be the bottleneck: within minutes of LLaVA training
a random tower never learns where the small shapes are. This step teaches it first, cheaply: the tower alone
(no language model, 64 patch tokens per image) runs ~50x faster per image than a LLaVA training row.

Targets for each patch of the ``G x G`` grid the tower sees (the padded square, as LLaVA's "pad" mode):
* ``classes (G*G, C)``: the fraction of the patch each tag covers (index 0 = the padding), a soft label;
* ``boxes (G*G, 4)``: the box, on the padded square, of the entity that owns the patch (a thing covering at
  least :data:`THING_SHARE` of it wins over the stuff around it), with ``box_weight (G*G,)`` 0 where nothing
  owns the patch (padding), and ``thing (G*G,)`` 1 where a thing owns it (the loss can weigh those patches up).

and for each thing of the image, its share of every patch (normalised to sum to 1) and its tag: the tower is also
asked to name each shape from the share-weighted mean of its patch features (:func:`entity_loss`), the
question the chain's label stage asks about a box. A patch sees only part of a 2x2-patch shape, so the
per-patch loss alone taught the colours (probe: 91% from pooled features) but hardly the shapes (21% of 8).

The loop is plain torch on purpose: a vision-only pretext task with a throwaway head, no text, no checkpoints,
where the HF Trainer would add collation and logging overhead and nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from pancapchain.data.schema import PanopticSample
from pancapchain.mask.rle import box_to_mask, decode_rle, masks_to_square
from pancapchain.mask.targets import box_on_square
from pancapchain.model.box_features import patch_weights
from pancapchain.model.soft_bins import gaussian_bin_targets

PAD_CLASS = "<pad>"
ENTITY_POOLS = ("mask", "box")
THING_SHARE = 0.2  # a thing owning >= 20% of a patch owns it: shapes are small next to the stuff around them


@dataclass
class DenseTargets:
    """Stacked per-patch targets of N images: classes (N, G*G, C), boxes (N, G*G, 4), box_weight (N, G*G) (1 where
    an entity owns the patch), thing (N, G*G) (1 where a thing owns it)."""

    classes: torch.Tensor
    boxes: torch.Tensor
    box_weight: torch.Tensor
    thing: torch.Tensor
    entity_share: torch.Tensor | None = None  # (N, E, G*G): each thing's share of each patch, rows sum to 1
    entity_class: torch.Tensor | None = None  # (N, E): its tag class, -1 = no entity (padding)

    def take(self, idx: torch.Tensor) -> DenseTargets:
        """The targets of the images ``idx`` (a batch)."""
        extra = (None, None) if self.entity_share is None else (self.entity_share[idx], self.entity_class[idx])
        return DenseTargets(self.classes[idx], self.boxes[idx], self.box_weight[idx], self.thing[idx], *extra)

    def mirrored(self, rows: torch.Tensor) -> DenseTargets:
        """These targets with the images ``rows`` (B,) bool mirrored left-right, as :func:`mirror_pixels` does.

        Exact on the patch grid: patch column j becomes G-1-j, a box (x1, y1, x2, y2) becomes (1-x2, y1, 1-x1, y2).
        The synthetic shapes are left-right symmetric, so every tag stays true."""
        grid = math.isqrt(self.classes.shape[1])

        def cols(t: torch.Tensor, lead: int) -> torch.Tensor:  # flip the grid's column axis of (B, [E,] G*G, ...)
            shape = t.shape
            flipped = t.reshape(*shape[:lead], grid, grid, *shape[lead + 1 :]).flip(lead + 1).reshape(shape)
            return torch.where(rows.view(-1, *[1] * (t.dim() - 1)), flipped, t)

        boxes = cols(self.boxes, 1)
        boxes = torch.where(rows.view(-1, 1, 1), torch.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0],
                                                               boxes[..., 3]], -1), boxes)
        share = None if self.entity_share is None else cols(self.entity_share, 2)
        return DenseTargets(cols(self.classes, 1), boxes, cols(self.box_weight, 1), cols(self.thing, 1), share,
                            self.entity_class)


def mirror_pixels(pixels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) pixels with the images ``rows`` (B,) bool mirrored left-right."""
    return torch.where(rows.view(-1, 1, 1, 1), pixels.flip(-1), pixels)


def tag_vocabulary(samples: Sequence[PanopticSample]) -> dict[str, int]:
    """Every tag of ``samples`` -> class index (sorted; index 0 is the padding class)."""
    tags = sorted({entity.tag for sample in samples for entity in sample.entities})
    return {PAD_CLASS: 0, **{tag: i + 1 for i, tag in enumerate(tags)}}


def patch_shares(sample: PanopticSample, grid: int) -> np.ndarray:
    """(N + 1, G*G): the share of each patch of the padded square that each entity covers, then the image."""
    h, w = sample.height, sample.width
    masks = np.stack(
        [
            decode_rle(e.mask, f"{sample.id} entity {e.id}") if e.mask is not None else box_to_mask(e.box, h, w)
            for e in sample.entities
        ]
        + [np.ones((h, w), dtype=bool)]
    )
    return masks_to_square(masks, grid, binary=False).reshape(len(masks), grid * grid)


def patch_targets(
    sample: PanopticSample, grid: int, vocab: dict[str, int], shares: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample's targets: classes (G*G, C), boxes (G*G, 4) on the padded square, box_weight (G*G,), thing (G*G,).

    ``shares``: the sample's :func:`patch_shares` when the caller already has them."""
    h, w = sample.height, sample.width
    shares = patch_shares(sample, grid) if shares is None else shares
    image_share, shares = shares[-1], shares[:-1]
    classes = torch.zeros(grid * grid, len(vocab))
    classes[:, 0] = 1.0 - image_share
    for entity, share in zip(sample.entities, shares):
        classes[:, vocab.get(entity.tag, 0)] += share
    classes = classes / classes.sum(-1, keepdim=True).clamp_min(1e-6)
    is_thing = torch.tensor([e.is_thing for e in sample.entities], dtype=torch.bool)
    thing_owns = is_thing[:, None] & (shares >= THING_SHARE)  # (N, G*G)
    owner_score = shares + thing_owns.float()  # things first, then coverage
    owner = owner_score.argmax(0) if len(sample.entities) else torch.zeros(grid * grid, dtype=torch.long)
    squares = torch.tensor([box_on_square(e.box, w, h) for e in sample.entities] or [[0.0] * 4])
    boxes = squares[owner]
    if not len(sample.entities):
        return classes, boxes, torch.zeros(grid * grid), torch.zeros(grid * grid)
    return classes, boxes, (shares.max(0).values > 0.1).float(), thing_owns.any(0).float()


def thing_shares(sample: PanopticSample, shares: np.ndarray, vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample's things: (T, G*G) share of each patch normalised over the patches (rows sum to 1), (T,) class.

    ``shares``: the sample's :func:`patch_shares`."""
    rows = [i for i, e in enumerate(sample.entities) if e.is_thing]
    if not rows:
        return torch.zeros(0, shares.shape[-1]), torch.zeros(0, dtype=torch.long)
    mine = torch.as_tensor(shares[rows], dtype=torch.float32)
    tags = [vocab.get(sample.entities[i].tag, 0) for i in rows]
    return mine / mine.sum(-1, keepdim=True).clamp_min(1e-6), torch.tensor(tags)


def box_shares(sample: PanopticSample, grid: int) -> torch.Tensor:
    """(T, G*G): each thing's box share of every patch of the padded square, rows summing to 1.

    The weights :mod:`pancapchain.model.box_features` pools a ``</box>``'s feature with (boxes, not masks)."""
    rows = [patch_weights([box_on_square(e.box, sample.width, sample.height)], grid)
            for e in sample.entities if e.is_thing]
    if not rows:
        return torch.zeros(0, grid * grid)
    stacked = torch.stack(rows)
    return stacked / stacked.sum(-1, keepdim=True).clamp_min(1e-6)


def build_targets(samples: Sequence[PanopticSample], grid: int, vocab: dict[str, int], entity_pool: str = "mask"
                  ) -> DenseTargets:
    """The dense targets of ``samples``; ``entity_pool``: the things' pooling weights, "mask" (exact shares) or
    "box" (their boxes' shares, what the chain's box features read)."""
    if entity_pool not in ENTITY_POOLS:
        raise ValueError(f"entity_pool must be one of {ENTITY_POOLS}, not {entity_pool!r}")
    parts, per_thing = [], []
    for sample in tqdm(samples, desc="dense targets", leave=False):
        shares = patch_shares(sample, grid)  # the masks are decoded once for both kinds of targets
        parts.append(patch_targets(sample, grid, vocab, shares))
        share, tags = thing_shares(sample, shares, vocab)
        per_thing.append((box_shares(sample, grid) if entity_pool == "box" else share, tags))
    most = max([len(c) for _, c in per_thing] + [1])
    share = torch.zeros(len(samples), most, grid * grid)
    cls = torch.full((len(samples), most), -1, dtype=torch.long)
    for i, (sh, c) in enumerate(per_thing):
        share[i, : len(c)], cls[i, : len(c)] = sh, c
    return DenseTargets(*(torch.stack(list(p)) for p in zip(*parts)), share, cls)


def load_pixels(samples: Sequence[PanopticSample], image_root: Path, image_processor, chunk: int = 256) -> torch.Tensor:
    """(N, 3, S, S) pixel values exactly as the LLaVA processor prepares them for the tower."""
    out = []
    for start in tqdm(range(0, len(samples), chunk), desc="images", leave=False):
        images = [Image.open(image_root / s.image).convert("RGB") for s in samples[start : start + chunk]]
        out.append(image_processor(images, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


class DenseHead(nn.Module):
    """Patch features (B, G*G, D) -> class logits (B, G*G, C) and the owner box per patch.

    ``box_bins == 0``: boxes (B, G*G, 4) in [0, 1] (regression). ``box_bins == K``: logits (B, G*G, 4, K) over K
    positions per coordinate, the same grid as the bins format's ``<loc_i>`` tokens: a feature that linearly
    scores the bins of each coordinate is what the language model's location-token head reads most easily
    (a scalar coordinate needs the language model to learn a scalar -> one-of-K map first).
    """

    def __init__(self, dim: int, n_classes: int, box_bins: int = 0):
        super().__init__()
        self.box_bins = box_bins
        self.classes = nn.Linear(dim, n_classes)
        self.entity_classes = nn.Linear(dim, n_classes)  # a thing's pooled features -> its tag
        self.boxes = nn.Linear(dim, 4 * box_bins if box_bins else 4)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = self.boxes(features)
        if self.box_bins:
            return self.classes(features), boxes.unflatten(-1, (4, self.box_bins))
        return self.classes(features), boxes.sigmoid()


def patch_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, G*G, D): the tower layer LLaVA feeds its projector, CLS dropped ("default")."""
    tower = model.model.vision_tower
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    return hidden[:, 1:]


def entity_loss(head: DenseHead, features: torch.Tensor, targets: DenseTargets) -> tuple[torch.Tensor, float]:
    """Cross-entropy of each thing's tag from its share-weighted mean patch feature, and the accuracy.

    ``features`` (B, G*G, D); pooled (B, E, D) = entity_share (B, E, G*G) @ features. This is the question the
    label stage asks of the tower (what is in this region), which the per-patch loss asks only patch by patch.
    """
    pooled = torch.einsum("beg,bgd->bed", targets.entity_share, features)
    logits = head.entity_classes(pooled)  # (B, E, C)
    real = targets.entity_class >= 0
    if not real.any():
        return features.sum() * 0.0, 0.0
    ce = nn.functional.cross_entropy(logits[real], targets.entity_class[real])
    return ce, (logits[real].argmax(-1) == targets.entity_class[real]).float().mean().item()


def dense_loss(
    head: DenseHead, features: torch.Tensor, targets: DenseTargets, thing_weight: float = 1.0,
    entity_weight: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Soft-label cross-entropy over classes + a box loss on owned patches (see :func:`box_loss`).

    ``thing_weight``: the weight of the patches a thing owns in both terms (the others weigh 1). The reported
    metrics are unweighted; ``thing_acc`` is the class accuracy on the things' patches.
    """
    logits, boxes = head(features)
    patch_weight = 1.0 + (thing_weight - 1.0) * targets.thing  # (B, G*G)
    ce_patch = -(targets.classes * logits.log_softmax(-1)).sum(-1)
    ce = (ce_patch * patch_weight).sum() / patch_weight.sum()
    box_term, l1 = box_loss(boxes, targets.boxes)  # both (B, G*G)
    owned = targets.box_weight
    weight = owned * patch_weight
    hit = (logits.argmax(-1) == targets.classes.argmax(-1)).float()
    metrics = {
        "class_ce": ce_patch.mean().item(),
        "box_l1": ((l1 * owned).sum() / owned.sum().clamp_min(1)).item(),
        "class_acc": hit.mean().item(),
        "thing_acc": ((hit * targets.thing).sum() / targets.thing.sum().clamp_min(1)).item(),
    }
    loss = ce + (box_term * weight).sum() / weight.sum().clamp_min(1)
    if entity_weight > 0:
        if targets.entity_share is None:
            raise ValueError("entity_weight > 0 needs targets with entity shares (build_targets makes them)")
        ent_ce, metrics["entity_acc"] = entity_loss(head, features, targets)
        loss = loss + entity_weight * ent_ce
    return loss, metrics


def box_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch (loss, L1 of the four coordinates), both (B, G*G); ``target`` (B, G*G, 4) in [0, 1].

    Regression head (``pred`` (B, G*G, 4)): 5 x L1 (weight 5: boxes are what LLaVA needs). Bins head (``pred``
    (B, G*G, 4, K)): cross-entropy against a Gaussian of one bin's width around the true position, so a near
    miss costs less than a far one; the L1 reported is that of the expected position.
    """
    if pred.dim() == target.dim():
        l1 = (pred - target).abs().sum(-1)
        return 5.0 * l1, l1
    k = pred.shape[-1]
    grid = torch.arange(k, dtype=pred.dtype, device=pred.device)
    soft = gaussian_bin_targets(target * (k - 1), k)  # (B, G*G, 4, K)
    log_p = pred.log_softmax(-1)
    expected = (log_p.exp() * grid).sum(-1) / (k - 1)
    return -(soft * log_p).sum(-1).sum(-1), (expected - target).abs().sum(-1).detach()


def pretrain_vision(
    model,
    pixels: torch.Tensor,
    targets: DenseTargets,
    *,
    seconds: float,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    max_steps: int = 0,
    box_bins: int = 0,
    thing_weight: float = 1.0,
    entity_weight: float = 0.0,
    mirror: bool = False,
) -> dict:
    """Train ``model``'s vision tower in place on the dense targets for ``seconds`` (or ``max_steps``).

    ``box_bins``: 0 regresses the owner boxes, K > 0 classifies each coordinate into K bins (:class:`DenseHead`).
    ``thing_weight``: weight of the things' patches in the loss (:func:`dense_loss`). ``mirror``: mirror a random
    half of each batch left-right (targets too), so the tower sees twice as many distinct scenes.
    Linear warmup (5% of the budget) then cosine decay on elapsed time. Returns the metrics averaged over the
    last 20 steps (class_ce, box_l1, class_acc, thing_acc) with the step count and seconds.
    """
    torch.manual_seed(seed)
    tower = model.model.vision_tower
    head = DenseHead(model.config.vision_config.hidden_size, targets.classes.shape[-1], box_bins)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    tower.train()
    start, step, recent = time.monotonic(), 0, []
    bar = tqdm(total=int(seconds) if not max_steps else max_steps, desc="pretrain vision", unit="s" if not max_steps else "step")
    while True:
        elapsed = time.monotonic() - start
        done = step >= max_steps if max_steps else elapsed >= seconds
        if done:
            break
        frac = step / max_steps if max_steps else elapsed / seconds
        for group in optimizer.param_groups:
            group["lr"] = lr * (frac / 0.05 if frac < 0.05 else 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95)))
        idx = torch.randint(0, len(pixels), (batch_size,))
        batch_pixels, batch_targets = pixels[idx], targets.take(idx)
        if mirror:
            rows = torch.rand(batch_size) < 0.5
            batch_pixels, batch_targets = mirror_pixels(batch_pixels, rows), batch_targets.mirrored(rows)
        loss, metrics = dense_loss(head, patch_features(model, batch_pixels), batch_targets, thing_weight,
                                   entity_weight)
        recent = (recent + [metrics])[-20:]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        bar.update(1 if max_steps else int(time.monotonic() - start) - bar.n)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{metrics['class_acc']:.2f}", refresh=False)
    bar.close()
    tower.eval()
    means = {k: round(sum(m[k] for m in recent) / max(1, len(recent)), 4) for k in (recent[0] if recent else {})}
    return {**means, "steps": step, "seconds": round(time.monotonic() - start, 1)}
