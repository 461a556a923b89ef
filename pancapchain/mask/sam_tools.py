"""SAM as a data and inference tool: box prompts -> masks, and "segment everything" candidate masks.

Both run a local, frozen transformers ``SamModel`` (see :func:`pancapchain.mask.sam_head.load_sam_model`;
nothing is downloaded) with the preprocessing of ``SamProcessor``: the ``SamImageProcessor`` saved in the
checkpoint folder (``preprocessor_config.json``) or, when there is none, one built for the model's
``image_size`` (longest side resized to it, ImageNet-normalized, zero-padded bottom/right to a square).
Prompts are given in pixels of the original image and rescaled to the resized image like ``SamProcessor``
does; the ``(4g, 4g)`` low-resolution mask logits are cropped to the unpadded part and resized back to the
original ``(H, W)`` by ``SamImageProcessor.post_process_masks`` (threshold 0 on the logits).

* :func:`boxes_to_masks`: one normalized xyxy box -> one ``(H, W)`` bool mask (``multimask_output=False``).
* :func:`automatic_candidates`: a ``points_per_side x points_per_side`` grid of single positive points,
  three masks per point (``multimask_output=True``, SAM's answer to ambiguous points); keep masks whose
  predicted IoU >= ``pred_iou_thresh``, best first, dropping near-duplicates (mask IoU >= ``dup_iou``) and
  empty masks, at most ``max_masks``. Done with ``SamModel`` directly rather than the ``mask-generation``
  pipeline: that pipeline de-duplicates by *box* NMS and crops, while SMR needs distinct *masks*; and the
  image is encoded once for all point batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pancapchain.data.io import SkipReport
from pancapchain.data.schema import Box, validate_box
from pancapchain.mask.sam_head import MaskHeadError, load_sam_model

# Near-duplicate tests run on masks subsampled to at most this many pixels on the longest side (exact below it).
DEDUP_SIDE = 256


def load_sam_image_processor(sam_path: str | Path, image_size: int):
    """The checkpoint's ``SamImageProcessor`` if saved with it, else one for ``image_size`` px inputs.

    Uses the PIL back-end when torchvision is not installed (same preprocessing, no fallback warning)."""
    import importlib.util

    import transformers

    name = "SamImageProcessor" if importlib.util.find_spec("torchvision") else "SamImageProcessorPil"
    SamImageProcessor = getattr(transformers, name)
    path = Path(sam_path)
    if (path / "preprocessor_config.json").is_file():
        try:
            return SamImageProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise MaskHeadError(f"cannot load the SAM image processor from {path}: {err}") from None
    return SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": image_size // 4},
        mask_pad_size={"height": image_size // 4, "width": image_size // 4},
    )


class SamRunner:
    """A loaded SAM model + image processor, reused across images (build once, call many times)."""

    def __init__(self, sam_path: str | Path, device: str = "cpu"):
        self.path = str(sam_path)
        self.device = torch.device(device)
        self.model = load_sam_model(sam_path).to(self.device).eval()
        self.model.requires_grad_(False)
        self.processor = load_sam_image_processor(sam_path, int(self.model.config.vision_config.image_size))

    @torch.no_grad()
    def encode(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        """PIL image -> ``(1, C, g, g)`` image embedding and the processor's size info (original/reshaped)."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        sizes = {
            "original": [tuple(int(v) for v in inputs["original_sizes"][0])],
            "reshaped": [tuple(int(v) for v in inputs["reshaped_input_sizes"][0])],
        }
        return self.model.get_image_embeddings(pixels), sizes

    @staticmethod
    def to_model_coords(xy: torch.Tensor, sizes: dict) -> torch.Tensor:
        """Pixel ``x, y`` pairs of the original image (last dim even) -> the resized image's coordinates."""
        (oh, ow), (rh, rw) = sizes["original"][0], sizes["reshaped"][0]
        scale = torch.tensor([rw / ow, rh / oh], dtype=torch.float32).repeat(xy.shape[-1] // 2)
        return xy.float() * scale

    def to_image_masks(self, logits: torch.Tensor, sizes: dict) -> torch.Tensor:
        """``(N, K, 4g, 4g)`` low-res logits -> ``(N, K, H, W)`` bool masks on the original image."""
        return self.processor.post_process_masks(
            [logits.float().cpu()], sizes["original"], sizes["reshaped"], mask_threshold=0.0, binarize=True
        )[0]


def _runner(sam: str | Path | SamRunner) -> SamRunner:
    return sam if isinstance(sam, SamRunner) else SamRunner(sam)


@torch.no_grad()
def boxes_to_masks(
    sam_path: str | Path | SamRunner, image: Image.Image, boxes: Sequence[Box], batch: int = 64
) -> list[np.ndarray]:
    """One ``(H, W)`` bool mask per normalized xyxy box, from SAM box prompts (single-mask output).

    ``sam_path`` may be an already built :class:`SamRunner` to avoid reloading the model per image.
    Invalid boxes raise ``SampleError``; no boxes -> ``[]``.
    """
    checked = [validate_box(list(b), "boxes_to_masks", f"box {i}") for i, b in enumerate(boxes)]
    if not checked:
        return []
    sam = _runner(sam_path)
    embedding, sizes = sam.encode(image)
    height, width = sizes["original"][0]
    pixels = torch.tensor(checked, dtype=torch.float32) * torch.tensor([width, height, width, height])
    masks: list[np.ndarray] = []
    for start in range(0, len(checked), batch):
        prompts = sam.to_model_coords(pixels[start : start + batch], sizes)[None].to(sam.device)
        out = sam.model(image_embeddings=embedding, input_boxes=prompts, multimask_output=False)
        masks.extend(m[0].numpy() for m in sam.to_image_masks(out.pred_masks[0], sizes))
    return masks


def point_grid(points_per_side: int, height: int, width: int) -> torch.Tensor:
    """``(n * n, 2)`` pixel ``x, y`` of cell centres of an ``n x n`` grid over an ``(H, W)`` image."""
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    centres = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(centres * height, centres * width, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool masks -> ``(N, N)`` IoU matrix (two empty masks count as IoU 0)."""
    flat = masks.reshape(masks.shape[0], -1).float()
    inter = flat @ flat.T
    area = flat.sum(dim=1)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def select_masks(
    masks: torch.Tensor, scores: torch.Tensor, pred_iou_thresh: float, max_masks: int, dup_iou: float = 0.9
) -> list[int]:
    """Indices of ``(N, H, W)`` masks kept: non-empty, score >= thresh, best score first, no kept pair with
    IoU >= ``dup_iou`` (a mask too close to a better one is dropped), at most ``max_masks``."""
    order = [int(i) for i in torch.argsort(scores, descending=True, stable=True)]
    order = [i for i in order if scores[i] >= pred_iou_thresh and bool(masks[i].any())]
    if not order:
        return []
    step = max(1, -(-max(masks.shape[-2:]) // DEDUP_SIDE))
    iou = pairwise_iou(masks[order][:, ::step, ::step])
    kept: list[int] = []  # positions in ``order``
    for pos in range(len(order)):
        if len(kept) >= max_masks:
            break
        if not kept or float(iou[pos, kept].max()) < dup_iou:
            kept.append(pos)
    return [order[p] for p in kept]


@torch.no_grad()
def automatic_candidates(
    sam_path: str | Path | SamRunner,
    image: Image.Image,
    points_per_side: int = 8,
    pred_iou_thresh: float = 0.5,
    max_masks: int = 64,
    points_per_batch: int = 16,
) -> list[np.ndarray]:
    """Class-agnostic ``(H, W)`` bool candidate masks of an image (SAM "segment everything", see module doc)."""
    if max_masks < 1:
        raise ValueError(f"max_masks must be >= 1, got {max_masks}")
    sam = _runner(sam_path)
    embedding, sizes = sam.encode(image)
    height, width = sizes["original"][0]
    grid = point_grid(points_per_side, height, width)
    all_masks, all_scores = [], []
    for start in range(0, len(grid), points_per_batch):
        points = sam.to_model_coords(grid[start : start + points_per_batch], sizes)
        out = sam.model(
            image_embeddings=embedding,
            input_points=points[None, :, None, :].to(sam.device),
            input_labels=torch.ones(1, len(points), 1, dtype=torch.long, device=sam.device),
            multimask_output=True,
        )
        scores = out.iou_scores[0].float().cpu().reshape(-1)
        keep = scores >= pred_iou_thresh  # filter before upsampling: full-size masks are the memory cost
        if keep.any():
            logits = out.pred_masks[0].reshape(-1, *out.pred_masks.shape[-2:])[keep]
            all_masks.append(sam.to_image_masks(logits[:, None], sizes)[:, 0])
            all_scores.append(scores[keep])
    if not all_masks:
        return []
    masks, scores = torch.cat(all_masks), torch.cat(all_scores)
    return [masks[i].numpy() for i in select_masks(masks, scores, pred_iou_thresh, max_masks)]


# ------------------------------------------------------------------------------------------- dataset level


def _open_checked(root: Path, sample) -> Image.Image:
    """The sample's RGB image; raises OSError/SampleError (unreadable, escaping path, size mismatch)."""
    from pancapchain.data.schema import SampleError, resolve_image

    with Image.open(resolve_image(root, sample.image, sample.id)) as img:
        image = img.convert("RGB")
    if (image.width, image.height) != (sample.width, sample.height):
        raise SampleError(
            sample.id, f"image is {image.width}x{image.height}, the record says {sample.width}x{sample.height}"
        )
    return image


def fill_sam_masks(samples: Sequence, image_root: str | Path, sam: str | Path | SamRunner,
                   overwrite: bool = False) -> tuple[list, dict, SkipReport]:
    """Samples with ``Entity.mask`` filled from SAM box prompts (existing masks kept unless ``overwrite``).

    Returns ``(samples, counts, report)``: every input sample comes back (one whose image cannot be used is
    returned unchanged and counted in ``report`` with the reason); ``counts`` has ``masks_filled``,
    ``masks_kept`` (already present) and ``samples_changed``.
    """
    from dataclasses import replace

    from tqdm import tqdm

    from pancapchain.data.schema import SampleError
    from pancapchain.mask.rle import encode_rle

    runner, root = _runner(sam), Path(image_root)
    report = SkipReport(what="samples given SAM masks")
    counts = {"masks_filled": 0, "masks_kept": 0, "samples_changed": 0}
    out = []
    for sample in tqdm(samples, desc="sam-masks", unit="img"):
        todo = [i for i, e in enumerate(sample.entities) if overwrite or e.mask is None]
        counts["masks_kept"] += len(sample.entities) - len(todo)
        if not todo:
            out.append(sample)
            continue
        try:
            image = _open_checked(root, sample)
            masks = boxes_to_masks(runner, image, [sample.entities[i].box for i in todo])
        except (OSError, SampleError) as err:
            report.skip(sample.id, f"{type(err).__name__}: {err}")
            out.append(sample)
            continue
        entities = list(sample.entities)
        for i, mask in zip(todo, masks):
            entities[i] = replace(entities[i], mask=encode_rle(mask))
        out.append(replace(sample, entities=tuple(entities)))
        counts["masks_filled"] += len(todo)
        counts["samples_changed"] += 1
    report.kept = counts["samples_changed"]
    return out, counts, report


def dataset_candidates(samples: Sequence, image_root: str | Path, sam: str | Path | SamRunner,
                       **settings) -> tuple[dict[str, list[np.ndarray]], SkipReport]:
    """``{sample id: [(H, W) bool candidate mask, ...]}`` from :func:`automatic_candidates` (``settings``);
    samples whose image cannot be used are left out and counted in the report."""
    from tqdm import tqdm

    from pancapchain.data.schema import SampleError

    runner, root = _runner(sam), Path(image_root)
    report = SkipReport(what="images with SAM candidates")
    out: dict[str, list[np.ndarray]] = {}
    for sample in tqdm(samples, desc="sam-candidates", unit="img"):
        try:
            out[sample.id] = automatic_candidates(runner, _open_checked(root, sample), **settings)
        except (OSError, SampleError) as err:
            report.skip(sample.id, f"{type(err).__name__}: {err}")
    report.kept = len(out)
    return out, report
