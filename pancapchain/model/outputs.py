"""Read model output fields whose shape changed between transformers releases, in one place.

transformers 5.23 returns ``image_hidden_states`` as one (N_images * N_tokens, D) or (N_images, N_tokens, D)
tensor; 5.24 returns a list of per-image (N_tokens, D) tensors (and deprecates the field in favour of
``image_outputs.pooler_output``, announcing another change for 5.30). Every reader goes through these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def per_image_features(features: Tensor | Sequence[Tensor], n_images: int) -> list[Tensor]:
    """Projected image features as a list of ``n_images`` tensors of shape (N_tokens, D).

    ``features`` is a tensor (N_images, N_tokens, D) or (N_images * N_tokens, D), or a list/tuple of per-image
    (N_tokens, D) tensors (a leading batch dimension of 1 per image is dropped).
    """
    if isinstance(features, Tensor):
        if features.dim() == 2:
            if features.shape[0] % max(n_images, 1):
                raise ValueError(f"{features.shape[0]} feature rows do not split into {n_images} images")
            features = features.reshape(n_images, -1, features.shape[-1])
        if features.dim() != 3 or features.shape[0] != n_images:
            raise ValueError(f"image features of shape {tuple(features.shape)} for {n_images} images")
        return list(features.unbind(0))
    items = [f.reshape(-1, f.shape[-1]) for f in features]
    if len(items) != n_images:
        raise ValueError(f"{len(items)} per-image feature tensors for {n_images} images")
    return items


def batched_image_features(features: Tensor | Sequence[Tensor], n_images: int) -> Tensor:
    """Projected image features stacked as (n_images, N_tokens, D); every image must have the same N_tokens."""
    items = per_image_features(features, n_images)
    if len({f.shape[0] for f in items}) > 1:
        raise ValueError(f"images have different token counts {[f.shape[0] for f in items]}; cannot stack")
    return torch.stack(items, dim=0)


def image_features_of(outputs, n_images: int) -> Tensor:
    """(n_images, N_tokens, D) projected image features of a Llava forward output, on any transformers 5.x."""
    image_outputs = getattr(outputs, "image_outputs", None)
    pooled = getattr(image_outputs, "pooler_output", None) if image_outputs is not None else None
    if pooled is None:
        pooled = outputs.image_hidden_states
    if pooled is None:
        raise ValueError("the model output carries no image features (was pixel_values passed?)")
    return batched_image_features(pooled, n_images)
