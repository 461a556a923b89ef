"""DiffPNG SAM-based Mask Refinement (SMR) and the candidate-mask file it reads.

SMR (DiffPNG eq. 12-15): for a binary prediction P and class-agnostic candidate masks C (SAM "segment
everything" output), keep every candidate with ``|C & P| / |C| > tau`` (the candidate lies mostly inside
the prediction: fixes under-segmentation) or ``|C & P| / |P| > tau`` (the candidate covers most of the
prediction: fixes over-segmentation); return the union of the kept candidates, or P itself when none is
kept. Empty candidates never match; an empty P matches nothing. DiffPNG binarises its soft map first at
alpha = 0.3 and uses tau = 0.6 in its evaluation script (0.5 is the default here, as in its argparse).

Candidate file (JSON, one per dataset/split; written by :func:`save_candidates`)::

    {"format": "pancapchain-sam-candidates/1",
     "source": "free text, e.g. the SAM checkpoint and generator settings",
     "images": {"<image id>": [{"size": [H, W], "counts": "<COCO RLE>"}, ...], ...}}

Image ids are the sample ids of the data contract; all candidates of one image share its ``(H, W)``;
an image may have an empty list (SMR then keeps the prediction).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from pancapchain.data.io import SkipReport, atomic_write_json
from pancapchain.data.schema import SampleError
from pancapchain.mask.rle import check_rle, decode_rles, encode_rle

CANDIDATE_FORMAT = "pancapchain-sam-candidates/1"


class CandidateFileError(ValueError):
    """A candidate file or entry that cannot be used; the message names the file/image and the problem."""


def binarize(prob: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """Soft ``(H, W)`` map -> bool mask ``prob > alpha`` (DiffPNG's alpha = 0.3)."""
    return np.asarray(prob) > alpha


def _as_bool_mask(mask: Any, what: str) -> np.ndarray:
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) mask, got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(
            f"{what} must be boolean or 0/1 (binarize soft maps first), got values outside {{0, 1}}"
        )
    return arr.astype(bool)


def smr_refine(pred: np.ndarray, candidates: Sequence[np.ndarray], tau: float = 0.5) -> np.ndarray:
    """Refined ``(H, W)`` bool mask: union of candidates matching ``pred`` (see module docstring), else ``pred``."""
    p = _as_bool_mask(pred, "prediction")
    p_area = int(np.count_nonzero(p))
    refined = np.zeros_like(p)
    kept = 0
    for k, cand in enumerate(candidates):
        c = _as_bool_mask(cand, f"candidate {k}")
        if c.shape != p.shape:
            raise ValueError(f"candidate {k} has shape {c.shape}, the prediction {p.shape}")
        c_area = int(np.count_nonzero(c))
        if c_area == 0 or p_area == 0:
            continue
        inter = int(np.count_nonzero(c & p))
        if inter / c_area > tau or inter / p_area > tau:
            refined |= c
            kept += 1
    return refined if kept else p.copy()


def save_candidates(path: str | Path, candidates: Mapping[str, Sequence[Any]], source: str = "") -> int:
    """Write a candidate file; values are ``(H, W)`` masks (numpy/torch) or RLE dicts. Returns #images."""
    images: dict[str, list[dict[str, Any]]] = {}
    for image_id, masks in candidates.items():
        rles = [
            check_rle(m, f"{image_id}[{k}]") if isinstance(m, dict) else encode_rle(m)
            for k, m in enumerate(masks)
        ]
        if len({tuple(r["size"]) for r in rles}) > 1:
            raise CandidateFileError(f"image {image_id}: candidate masks have different sizes")
        images[str(image_id)] = rles
    atomic_write_json(path, {"format": CANDIDATE_FORMAT, "source": source, "images": images})
    return len(images)


def _check_image_entry(image_id: str, entry: Any) -> list[dict[str, Any]]:
    if not isinstance(entry, list):
        raise CandidateFileError(
            f"image {image_id}: candidates must be a list of RLE dicts, got {type(entry).__name__}"
        )
    try:
        rles = [check_rle(r, f"{image_id}[{k}]") for k, r in enumerate(entry)]
    except SampleError as err:
        raise CandidateFileError(f"image {image_id}: {err}") from None
    sizes = sorted({tuple(r["size"]) for r in rles})
    if len(sizes) > 1:
        raise CandidateFileError(f"image {image_id}: candidate masks have different sizes {sizes}")
    return rles


def load_candidates(path: str | Path, report: SkipReport | None = None) -> dict[str, list[dict[str, Any]]]:
    """Read a candidate file -> ``{image id: [RLE dict, ...]}`` (RLEs are checked, decoded later).

    A bad file raises CandidateFileError. A bad image entry is skipped and counted in ``report`` when one is
    given (``report.kept`` = images kept), otherwise it raises CandidateFileError naming the image.
    """
    file = Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CandidateFileError(f"candidate file {file} is not readable JSON: {err}") from None
    if (
        not isinstance(raw, dict)
        or raw.get("format") != CANDIDATE_FORMAT
        or not isinstance(raw.get("images"), dict)
    ):
        raise CandidateFileError(
            f"candidate file {file}: expected {{'format': {CANDIDATE_FORMAT!r}, 'images': {{id: [RLE, ...]}}}}"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for image_id, entry in raw["images"].items():
        try:
            out[image_id] = _check_image_entry(image_id, entry)
        except CandidateFileError as err:
            if report is None:
                raise CandidateFileError(f"{file}: {err}") from None
            report.skip(image_id, f"bad candidates: {err}")
    if report is not None:
        report.kept = len(out)
    return out


def candidate_masks(
    rles: Sequence[dict[str, Any]], height: int, width: int, image_id: str = "image"
) -> list[np.ndarray]:
    """Decode one image's candidates to ``(H, W)`` bool masks; a size other than ``(height, width)`` raises."""
    try:
        return list(decode_rles(rles, height, width, record=f"candidates of {image_id}"))
    except SampleError as err:
        raise CandidateFileError(str(err)) from None
