"""Soft targets over ordered bins, shared by the tower's bins box head and the location-token loss."""

from __future__ import annotations

import torch


def gaussian_bin_targets(centre: torch.Tensor, bins: int, sigma: float = 1.0) -> torch.Tensor:
    """(...,) bin positions (fractional allowed) -> (..., bins) distributions ∝ exp(-(j - centre)^2 / 2 sigma^2).

    Ordered bins (coordinates) make a near miss less wrong than a far one; one-hot targets do not say so.
    """
    grid = torch.arange(bins, dtype=centre.dtype, device=centre.device)
    return torch.softmax(-0.5 * ((grid - centre[..., None]) / sigma) ** 2, dim=-1)
