"""COCO run-length encoding of the data contract's masks, as numpy: the one place masks meet pycocotools.

An RLE is ``{"size": [H, W], "counts": str}`` (compressed counts as ASCII; uncompressed ``counts`` lists are
accepted on decode). Training targets and inference (:mod:`pancapchain.mask.rle`, which adds torch support and
errors naming the record) and evaluation (:mod:`pancapchain.eval.masks`) both read and write masks through here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

MaskLike = Any  # np.ndarray (H, W) bool/0-1, or a COCO RLE dict {"size": [H, W], "counts": str|bytes}


def to_binary_mask(mask: MaskLike) -> np.ndarray:
    """(H, W) bool array from a numpy mask or a COCO RLE dict (compressed or uncompressed counts)."""
    if isinstance(mask, dict):
        rle = mask
        if isinstance(rle.get("counts"), list):
            h, w = rle["size"]
            rle = mask_utils.frPyObjects(rle, h, w)
        elif isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        return mask_utils.decode(rle).astype(bool)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {arr.shape}")
    return arr.astype(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> compressed COCO RLE with ``counts`` as str (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
