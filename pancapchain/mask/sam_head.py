"""Optional SAM back-end of the mask head: a local transformers ``SamModel`` decodes the entity queries.

The projected entity queries enter SAM's mask decoder as *sparse prompt embeddings* (one token per
entity, LISA style); the dense prompt is SAM's learned "no mask" embedding. The image encoder, prompt
encoder and shared positional embedding are frozen (and the encoder stays in eval mode); only the mask
decoder trains. Shapes (C = SAM prompt width, 256 for the released models; g = image_size / patch_size,
64 for SAM at 1024 px):

* pixel_values ``(B, 3, image_size, image_size)``: SamImageProcessor output (longest side resized to
  ``image_size``, normalized, zero-padded bottom/right, so masks use ``pad="top_left"`` in
  :mod:`pancapchain.mask.rle`);
* image embeddings ``(B, C, g, g)``; per image with N entities: sparse prompts ``(1, N, 1, C)``, dense
  ``(1, C, g, g)``, decoder output ``(1, N, 1, 4g, 4g)`` -> logits ``(N, 4g, 4g)``.

The checkpoint must be a local folder with ``config.json`` + safetensors weights; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# SAM's mask decoder upsamples its embedding grid twice by 2 (two stride-2 transposed convolutions).
SAM_UPSAMPLE = 2
# Parts of SamModel that stay frozen; they are reloaded from the SAM checkpoint and never saved with the head.
FROZEN_PREFIXES = ("vision_encoder.", "prompt_encoder.", "shared_image_embedding.")


class MaskHeadError(RuntimeError):
    """A mask head that cannot be built, saved or loaded; the message names the folder/file and the problem."""


def load_sam_model(sam_path: str | Path):
    """``transformers.SamModel`` from a local folder (``config.json`` + safetensors), offline."""
    from transformers import SamModel

    path = Path(sam_path)
    if not str(sam_path) or not (path / "config.json").is_file():
        raise MaskHeadError(
            f"SAM checkpoint {str(sam_path)!r} is not a folder with config.json (backend='sam')"
        )
    try:
        return SamModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise MaskHeadError(f"cannot load SAM from {path}: {err}") from None


class SamBackend(nn.Module):
    """Frozen SAM encoders + trainable SAM mask decoder, driven by externally computed prompt embeddings."""

    def __init__(self, sam_path: str | Path):
        super().__init__()
        self.model = load_sam_model(sam_path)
        for name, module in self.model.named_children():
            if f"{name}." in FROZEN_PREFIXES:
                module.requires_grad_(False)
        self.model.vision_encoder.eval()

    @property
    def dim(self) -> int:
        """Prompt/decoder width C (the mask embedding width D of the head)."""
        return int(self.model.config.mask_decoder_config.hidden_size)

    @property
    def grid(self) -> int:
        """Side g of SAM's image-embedding grid."""
        return int(self.model.config.prompt_encoder_config.image_embedding_size)

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def train(self, mode: bool = True) -> SamBackend:
        super().train(mode)
        self.model.vision_encoder.eval()  # frozen: never switch it to training behaviour
        return self

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, image_size, image_size)`` -> ``(B, C, g, g)`` frozen image embeddings (no grad)."""
        size = self.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"SAM pixel_values must be (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}"
            )
        dtype = next(self.model.vision_encoder.parameters()).dtype
        with torch.no_grad():
            return self.model.get_image_embeddings(pixel_values.to(dtype))

    def pixel_features(self, embeddings: Tensor) -> Tensor:
        """Image embeddings ``(B, C, g, g)`` bilinearly upsampled to the mask grid ``(B, C, 4g, 4g)``."""
        side = self.grid * 2**SAM_UPSAMPLE
        return F.interpolate(embeddings, size=(side, side), mode="bilinear", align_corners=False)

    def decode(self, embedding: Tensor, prompts: Tensor) -> Tensor:
        """One image: embedding ``(1, C, g, g)`` and prompts ``(N, C)`` with N >= 1 -> logits ``(N, 4g, 4g)``."""
        if prompts.shape[0] == 0:
            raise ValueError("SAM's two-way transformer cannot decode 0 prompts; guard N = 0 before decode()")
        decoder = self.model.mask_decoder
        dtype = decoder.iou_token.weight.dtype
        grid = embedding.shape[-1]
        sparse = prompts.to(dtype).reshape(1, prompts.shape[0], 1, prompts.shape[1])
        dense = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, grid, grid)
        masks, _ = decoder(
            image_embeddings=embedding.to(dtype),
            image_positional_embeddings=self.model.get_image_wide_positional_embeddings().to(dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=False,
        )
        return masks[0, :, 0]


def sam_geometry(sam_path: str | Path) -> tuple[int, int]:
    """``(dim, grid)`` of a local SAM checkpoint, read from its config only (no weights loaded)."""
    from transformers import SamConfig

    path = Path(sam_path)
    if not (path / "config.json").is_file():
        raise MaskHeadError(f"SAM checkpoint {str(sam_path)!r} is not a folder with config.json")
    cfg = SamConfig.from_pretrained(str(path), local_files_only=True)
    return int(cfg.mask_decoder_config.hidden_size), int(cfg.prompt_encoder_config.image_embedding_size)
