"""How precisely a base's vision tower knows where the shapes are: a linear probe on its frozen patch features.

    .venv/bin/python benchmarks/tower_probe.py BASE --train TRAIN.jsonl --val VAL.jsonl [--images 1500]
                                                [--steps 1500]

A fresh :class:`pancapchain.model.vision_pretrain.DenseHead` (tags + owner box per patch, the box as
LOC_BINS + 1 bins per coordinate) is fitted on the frozen features of ``--images`` training scenes, then the
owner boxes of the held-out scenes' *thing* patches (owner box narrower than 0.6 of the square) are read off
as expected bin positions. Printed: per-coordinate mean absolute error and the centre error percentiles, in
pixels of the square the tower sees. A language model that reads boxes off these features cannot do better
than the probe (docs/learning_quality.md).

Also printed: what the tower knows of each *whole* shape. Every thing's patch features are averaged with its
exact mask shares as weights (a perfect box, better than the chain's), and two fresh linear classifiers name its
kind (circle, ring, ...) and its colour from that mean: ``shape_kind_acc`` / ``shape_colour_acc`` on the
held-out things, ``box_kind_acc`` the kind from the mean over the thing's *box* (what the chain's box features
hand the label stage), ``seen_kind_acc`` on training scenes the probe was not fitted on (scenes the base may have
been pretrained on: a gap to ``shape_kind_acc`` is memorisation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pancapchain.constants import LOC_BINS  # noqa: E402
from pancapchain.data.io import load_samples  # noqa: E402
from pancapchain.model.vision_pretrain import (  # noqa: E402
    DenseHead,
    box_shares,
    build_targets,
    dense_loss,
    load_pixels,
    patch_features,
    patch_shares,
    tag_vocabulary,
    thing_shares,
)


def frozen_features(model, processor, samples, root: Path, chunk: int = 64) -> torch.Tensor:
    """(N, G*G, D) tower features of ``samples`` (no gradient)."""
    pixels = load_pixels(samples, root, processor.image_processor)
    with torch.no_grad():
        return torch.cat([patch_features(model, pixels[i : i + chunk]) for i in range(0, len(pixels), chunk)])


def probe(base: Path, train: Path, val: Path, images: int, steps: int, seed: int = 0) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base, local_files_only=True, use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(base, local_files_only=True)
    all_train, val_samples = load_samples(train)[0], load_samples(val)[0]
    train_samples, seen_samples = all_train[:images], all_train[images : images + 400]
    vocab = tag_vocabulary(train_samples + val_samples)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    side = model.config.vision_config.image_size
    f_train = frozen_features(model, processor, train_samples, train.parent)
    f_val = frozen_features(model, processor, val_samples, val.parent)
    f_seen = frozen_features(model, processor, seen_samples, train.parent)
    t_train, t_val = build_targets(train_samples, grid, vocab), build_targets(val_samples, grid, vocab)
    head = DenseHead(f_train.shape[-1], len(vocab), LOC_BINS + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(f_train), (128,))
        loss, _ = dense_loss(head, f_train[idx], t_train.take(idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, logits = head(f_val)
        grid_pos = torch.arange(LOC_BINS + 1, dtype=torch.float32) / LOC_BINS
        boxes = (logits.softmax(-1) * grid_pos).sum(-1)  # (N, G*G, 4)
    target = t_val.boxes
    things = ((target[..., 2] - target[..., 0]) < 0.6) & (t_val.box_weight > 0)
    error = (boxes - target).abs()[things] * side
    centre = ((boxes[..., :2] + boxes[..., 2:]) / 2 - (target[..., :2] + target[..., 2:]) / 2).norm(dim=-1)
    centre = centre[things] * side
    return {
        "base": str(base), "thing_patches": int(things.sum()),
        "coordinate_error_px": [round(float(v), 2) for v in error.mean(0)],
        "centre_error_px_p10_p50_p90": [round(float(v), 2) for v in centre.quantile(torch.tensor([0.1, 0.5, 0.9]))],
        **shape_probe(f_train, train_samples, f_seen, seen_samples, f_val, val_samples, grid),
    }


def pooled_things(features: torch.Tensor, samples, grid: int, by_box: bool = False
                  ) -> tuple[torch.Tensor, list[str], list[str]]:
    """(T, D) mean features of every thing of ``samples`` (features (N, G*G, D)), kinds, colours.

    The mean is weighted by the thing's exact mask shares, or with ``by_box`` by its box's (as box features
    pool). Synthetic thing tags read "<colour> <kind>"."""
    pooled, kinds, colours = [], [], []
    for sample, feats in zip(samples, features):
        share = box_shares(sample, grid) if by_box else thing_shares(sample, patch_shares(sample, grid), {})[0]
        pooled.append(share @ feats)
        tags = [e.tag.split() for e in sample.entities if e.is_thing]
        kinds += [t[-1] for t in tags]
        colours += [t[0] for t in tags]
    return torch.cat(pooled), kinds, colours


def linear_accuracy(x_fit: torch.Tensor, y_fit: list[str], tests: list[tuple[torch.Tensor, list[str]]],
                    steps: int = 1500) -> list[float]:
    """Fit a standardised linear classifier on (x_fit, y_fit); its accuracy on each (x, y) of ``tests``."""
    labels = {name: i for i, name in enumerate(sorted(set(y_fit)))}
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-5
    clf = torch.nn.Linear(x_fit.shape[1], len(labels))
    optimizer = torch.optim.Adam(clf.parameters(), lr=1e-2, weight_decay=1e-4)
    target = torch.tensor([labels[y] for y in y_fit])
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(clf((x_fit - mean) / std), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return [float((clf((x - mean) / std).argmax(-1) == torch.tensor([labels.get(v, -1) for v in y])).float().mean())
                for x, y in tests]


def shape_probe(f_train, train_samples, f_seen, seen_samples, f_val, val_samples, grid: int) -> dict:
    """Kind and colour of whole things from their pooled frozen features (see the module docstring)."""
    x_fit, k_fit, c_fit = pooled_things(f_train, train_samples, grid)
    x_seen, k_seen, _ = pooled_things(f_seen, seen_samples, grid)
    x_val, k_val, c_val = pooled_things(f_val, val_samples, grid)
    kind_val, kind_seen = linear_accuracy(x_fit, k_fit, [(x_val, k_val), (x_seen, k_seen)])
    (colour_val,) = linear_accuracy(x_fit, c_fit, [(x_val, c_val)])
    xb_fit, kb_fit, _ = pooled_things(f_train, train_samples, grid, by_box=True)
    xb_val, kb_val, _ = pooled_things(f_val, val_samples, grid, by_box=True)
    (box_kind,) = linear_accuracy(xb_fit, kb_fit, [(xb_val, kb_val)])
    return {"things": len(k_val), "shape_kind_acc": round(kind_val, 3), "box_kind_acc": round(box_kind, 3),
            "kinds": len(set(k_fit)), "shape_colour_acc": round(colour_val, 3),
            "seen_kind_acc": round(kind_seen, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="a tiny llava-hf folder (pretrain-tiny output or a trained run)")
    parser.add_argument("--train", type=Path, required=True, help="panoptic JSONL the probe is fitted on")
    parser.add_argument("--val", type=Path, required=True, help="held-out panoptic JSONL it is measured on")
    parser.add_argument("--images", type=int, default=1500, help="training scenes used (default 1500)")
    parser.add_argument("--steps", type=int, default=1500, help="probe steps of 128 scenes (default 1500)")
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.base, args.train, args.val, args.images, args.steps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
