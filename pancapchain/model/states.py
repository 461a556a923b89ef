"""The language model's last hidden states, captured only while a ``with`` block runs a forward.

Both the training mask loss and inference's mask predictor read the final norm's output (what ``lm_head``
reads) at chosen token positions. A forward hook gives it without ``output_hidden_states`` copies of every
layer; registering it only for the forward that needs it keeps hooks from piling up on a shared model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The language model's final norm (its output is what ``lm_head`` reads)."""
    for name, module in model.named_modules():
        if name.endswith("language_model.norm"):
            return module
    raise ValueError("no language_model.norm module: not a llava-hf model?")


class FinalStates:
    """Holds the final-norm output ``(B, L, H)`` of the last forward run inside :meth:`capture`."""

    def __init__(self, model: torch.nn.Module):
        self.norm = final_norm(model)
        self.states: Tensor | None = None

    def _keep(self, module, inputs, output) -> None:
        self.states = output

    @contextmanager
    def capture(self) -> Iterator[FinalStates]:
        """Hook the final norm for the forwards of this block; the hook is removed on exit (even on error)."""
        self.states = None
        handle = self.norm.register_forward_hook(self._keep)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> Tensor | None:
        """The captured states, released here so they do not outlive the step."""
        states, self.states = self.states, None
        return states
