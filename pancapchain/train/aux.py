"""What ``PancapTrainer`` knows about an auxiliary loss (a mask head, ...): this protocol and nothing else.

An auxiliary loss names the collator keys it reads (popped from the batch before the model's forward), may
wrap the forward in a context (e.g. a hook that captures hidden states, removed afterwards), returns named
scalar parts that join the language-model loss, and saves/restores any state that is not part of the
Trainer's own checkpoint (e.g. a head that is not a peft module).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class AuxLoss(Protocol):
    batch_keys: tuple[str, ...]  # collator keys this loss reads; the model's forward never sees them

    def capture(self) -> AbstractContextManager:
        """Entered around the model's forward (one per micro-batch)."""

    def __call__(self, outputs, batch: dict) -> dict[str, Tensor]:
        """Named scalar parts (already weighted) from the forward's outputs and the full batch."""

    def save(self, output_dir: str | Path, state_dict: dict | None = None) -> None:
        """Write extra state beside a checkpoint; ``state_dict`` is the gathered model state under ZeRO-3."""

    def restore(self, checkpoint_dir: str | Path) -> None:
        """Read back what :meth:`save` wrote (Trainer resume)."""


class FunctionLoss:
    """An :class:`AuxLoss` from a plain ``fn(outputs, batch) -> {name: scalar}`` without keys or state."""

    batch_keys: tuple[str, ...] = ()

    def __init__(self, fn: Callable[[object, dict], dict[str, Tensor]]):
        self.fn = fn

    def capture(self) -> AbstractContextManager:
        return nullcontext()

    def __call__(self, outputs, batch: dict) -> dict[str, Tensor]:
        return self.fn(outputs, batch)

    def save(self, output_dir: str | Path, state_dict: dict | None = None) -> None:
        return None

    def restore(self, checkpoint_dir: str | Path) -> None:
        return None
