"""Mask encoding and geometry helpers shared by the mask head, its training targets and inference.

* RLE: COCO run-length encoding ``{"size": [H, W], "counts": str}`` (compressed counts as ASCII, the
  data contract's format; uncompressed ``counts`` lists are accepted on decode). Encoding/decoding is
  delegated to :mod:`pancapchain.data.rle` (pycocotools); this module adds torch support, batches and
  errors that name the record.
* Rasterisation: :func:`box_to_mask` draws a normalized xyxy box on an ``(H, W)`` grid.
* Square frame: the mask head predicts on a square ``S x S`` grid that covers the *padded square* image
  the vision tower saw. LLaVA "pad" mode centres the image on the square (``pad="center"``, offsets
  ``(side - W) // 2`` and ``(side - H) // 2`` as in the image processor); SAM pads bottom/right
  (``pad="top_left"``). :func:`masks_to_square` brings ground-truth masks into that frame (the losses'
  targets) and :func:`logits_to_image` brings predicted logits back to the original ``(H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pancapchain.data.rle import encode_rle as _encode_rle_np
from pancapchain.data.rle import to_binary_mask
from pancapchain.data.schema import Box, SampleError, validate_box

PAD_MODES = ("center", "top_left")


def _to_numpy_bool(mask: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {arr.shape}")
    return arr.astype(bool)


def encode_rle(mask: np.ndarray | Tensor) -> dict[str, Any]:
    """``(H, W)`` bool/0-1 mask (numpy or torch) -> COCO RLE ``{"size": [H, W], "counts": str}``."""
    return _encode_rle_np(_to_numpy_bool(mask))


def encode_rles(masks: np.ndarray | Tensor | Sequence[np.ndarray | Tensor]) -> list[dict[str, Any]]:
    """``(N, H, W)`` masks (array, tensor or list of ``(H, W)``) -> list of N RLE dicts."""
    return [encode_rle(m) for m in masks]


def check_rle(rle: Any, record: str) -> dict[str, Any]:
    """Structural check of one RLE dict (``size`` two non-negative ints, ``counts`` str/bytes/list)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise SampleError(
            record, f"a mask must be a COCO RLE dict with 'size' and 'counts', got {type(rle).__name__}"
        )
    size = rle["size"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and v >= 0 for v in size)
    ):
        raise SampleError(record, f"RLE 'size' must be [height, width] non-negative ints, got {size!r}")
    if not isinstance(rle["counts"], (str, bytes, list)):
        raise SampleError(
            record, f"RLE 'counts' must be a string or a list, got {type(rle['counts']).__name__}"
        )
    if isinstance(rle["counts"], list) and sum(rle["counts"]) != size[0] * size[1]:
        raise SampleError(
            record, f"uncompressed RLE counts sum to {sum(rle['counts'])}, not H*W = {size[0] * size[1]}"
        )
    return rle


def decode_rle(rle: dict[str, Any], record: str = "mask") -> np.ndarray:
    """COCO RLE dict -> ``(H, W)`` bool numpy array; a malformed RLE raises ``SampleError`` naming ``record``."""
    check_rle(rle, record)
    try:
        mask = to_binary_mask(rle)
    except (ValueError, TypeError, UnicodeEncodeError) as err:
        raise SampleError(record, f"undecodable RLE: {err}") from None
    if tuple(mask.shape) != tuple(rle["size"]):
        raise SampleError(record, f"RLE decodes to {mask.shape}, but its size says {rle['size']}")
    return mask


def decode_rle_tensor(
    rle: dict[str, Any], record: str = "mask", device: torch.device | str | None = None
) -> Tensor:
    """COCO RLE dict -> ``(H, W)`` torch.bool tensor on ``device``."""
    return torch.from_numpy(decode_rle(rle, record)).to(device)


def decode_rles(
    rles: Sequence[dict[str, Any]], height: int | None = None, width: int | None = None, record: str = "masks"
) -> np.ndarray:
    """N RLEs -> ``(N, H, W)`` bool array. All must share one size (and equal ``(height, width)`` if given);
    N = 0 needs ``height``/``width`` and gives ``(0, H, W)``."""
    masks = [decode_rle(r, f"{record}[{i}]") for i, r in enumerate(rles)]
    if not masks:
        if height is None or width is None:
            raise ValueError(f"{record}: no masks to decode and no (height, width) given for the empty stack")
        return np.zeros((0, height, width), dtype=bool)
    want = (height, width) if height is not None and width is not None else masks[0].shape
    for i, m in enumerate(masks):
        if m.shape != tuple(want):
            raise SampleError(
                f"{record}[{i}]", f"mask size {m.shape} differs from the expected {tuple(want)}"
            )
    return np.stack(masks)


def box_to_mask(box: Box | Sequence[float], height: int, width: int, record: str = "box") -> np.ndarray:
    """Rasterise a normalized xyxy box on an ``(height, width)`` grid -> ``(H, W)`` bool.

    Pixel ``(y, x)`` is inside when its centre ``((x + 0.5) / W, (y + 0.5) / H)`` lies in the closed box.
    A box thinner than a pixel that covers no centre still marks the one pixel holding the box centre, so
    every valid box gives a non-empty mask. Invalid boxes raise ``SampleError`` (see ``validate_box``).
    """
    x1, y1, x2, y2 = validate_box(list(box), record)
    if height <= 0 or width <= 0:
        raise ValueError(f"{record}: mask size must be positive, got {height}x{width}")
    cx = (np.arange(width) + 0.5) / width
    cy = (np.arange(height) + 0.5) / height
    mask = ((cy >= y1) & (cy <= y2))[:, None] & ((cx >= x1) & (cx <= x2))[None, :]
    if not mask.any():
        row = min(height - 1, int((y1 + y2) / 2 * height))
        col = min(width - 1, int((x1 + x2) / 2 * width))
        mask[row, col] = True
    return mask


def square_offsets(height: int, width: int, pad: str = "center") -> tuple[int, int, int]:
    """``(side, top, left)`` of an ``(H, W)`` image placed on its padded square of side ``max(H, W)``."""
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    side = max(height, width)
    if pad == "top_left":
        return side, 0, 0
    return side, (side - height) // 2, (side - width) // 2


def masks_to_square(
    masks: np.ndarray | Tensor, side: int, pad: str = "center", binary: bool = True
) -> Tensor:
    """``(N, H, W)`` masks (bool/0-1, numpy or torch) -> ``(N, side, side)`` float32 targets on the padded square.

    The image is padded with background to ``max(H, W)`` (``pad`` as in the module docstring), then area-
    averaged down (or nearest-upsampled) to ``side``; ``binary=True`` thresholds the covered fraction at 0.5.
    """
    x = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks).float()
    if x.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(x.shape)}")
    n, height, width = x.shape
    full, top, left = square_offsets(height, width, pad)
    canvas = x.new_zeros((n, full, full))
    canvas[:, top : top + height, left : left + width] = x
    if n == 0:
        return canvas.new_zeros((0, side, side))
    mode = "area" if side <= full else "nearest-exact"
    out = F.interpolate(canvas[:, None], size=(side, side), mode=mode)[:, 0]
    return (out >= 0.5).float() if binary else out


def logits_to_image(logits: Tensor, height: int, width: int, pad: str = "center") -> Tensor:
    """``(N, S, S)`` square-frame logits -> ``(N, H, W)`` logits on the original image (bilinear, then crop)."""
    if logits.dim() != 3 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must be (N, S, S), got shape {tuple(logits.shape)}")
    full, top, left = square_offsets(height, width, pad)
    if logits.shape[0] == 0:
        return logits.new_zeros((0, height, width))
    up = F.interpolate(logits[:, None].float(), size=(full, full), mode="bilinear", align_corners=False)[:, 0]
    return up[:, top : top + height, left : left + width]


def mask_iou(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> float:
    """IoU of two ``(H, W)`` bool masks; both empty -> 1.0 (nothing to find, nothing predicted)."""
    p, t = _to_numpy_bool(pred), _to_numpy_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)
