"""SGDiff-style mask head: one mask per grounded entity, its losses, RLE helpers and SAM-candidate refinement.

* :mod:`.head`: ``MaskHeadConfig``, ``MaskHead`` (light MaskFormer-style head or SAM back-end),
  ``save_mask_head`` / ``load_mask_head``.
* :mod:`.losses`: ``sigmoid_bce_loss``, ``dice_loss``, ``pool_mask_embeddings``, ``mecl_loss``.
* :mod:`.rle`: COCO RLE on numpy/torch, box rasterisation, padded-square frame conversions.
* :mod:`.refine`: DiffPNG SAM-based Mask Refinement (``smr_refine``) and candidate files.

See docs/mask_head.md for the design and the exact conventions.
"""

from pancapchain.mask.head import (
    MASK_HEAD_CONFIG,
    MASK_HEAD_WEIGHTS,
    MaskHead,
    MaskHeadConfig,
    load_mask_head,
    sam_head_config,
    save_mask_head,
)
from pancapchain.mask.losses import dice_loss, mecl_loss, pool_mask_embeddings, sigmoid_bce_loss
from pancapchain.mask.refine import binarize, load_candidates, save_candidates, smr_refine
from pancapchain.mask.rle import (
    box_to_mask,
    decode_rle,
    decode_rles,
    encode_rle,
    encode_rles,
    logits_to_image,
    mask_iou,
    masks_to_square,
)
from pancapchain.mask.sam_head import MaskHeadError

__all__ = [
    "MASK_HEAD_CONFIG",
    "MASK_HEAD_WEIGHTS",
    "MaskHead",
    "MaskHeadConfig",
    "MaskHeadError",
    "binarize",
    "box_to_mask",
    "decode_rle",
    "decode_rles",
    "dice_loss",
    "encode_rle",
    "encode_rles",
    "load_candidates",
    "load_mask_head",
    "logits_to_image",
    "mask_iou",
    "masks_to_square",
    "mecl_loss",
    "pool_mask_embeddings",
    "sam_head_config",
    "save_candidates",
    "save_mask_head",
    "sigmoid_bce_loss",
    "smr_refine",
]
