"""Merge a peft LoRA adapter into its base with ``merge_and_unload`` and prove the merge did what it should.

Checks (R11 in the ecosystem notes): every LoRA-targeted weight whose adapter is non-zero changed, no other base
tensor changed, and every ``modules_to_save`` tensor (the trained projector, an unfrozen vision tower) now holds
exactly the adapter's saved copy. Changes are detected with byte digests, so nothing is duplicated in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors import safe_open

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class MergeError(RuntimeError):
    """The merged model is not base + adapter; the message names the tensors that are wrong."""


@dataclass
class MergeReport:
    """What the merge changed. ``lora_tensors_changed == lora_modules`` unless an adapter pair is all zero."""

    lora_modules: int
    lora_tensors_changed: int
    saved_modules: list[str] = field(default_factory=list)
    saved_tensors: int = 0
    saved_tensors_changed: int = 0  # of the modules_to_save tensors, how many differ from the base's

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        saved = ", ".join(self.saved_modules) or "none"
        return (
            f"merged LoRA into {self.lora_tensors_changed}/{self.lora_modules} targeted weights; "
            f"modules_to_save ({saved}): {self.saved_tensors} tensors taken from the adapter, "
            f"{self.saved_tensors_changed} differ from the base"
        )


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """A digest of the tensor's raw bytes (any dtype); equal digests mean bit-identical tensors."""
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.blake2b(raw.numpy(), digest_size=16).digest()  # hashes the buffer, no copy


def parameter_digests(model: torch.nn.Module) -> dict[str, bytes]:
    return {name: tensor_digest(param) for name, param in model.named_parameters()}


def adapter_weight_file(adapter_dir: Path) -> Path:
    for name in ADAPTER_WEIGHT_FILES:
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    raise MergeError(f"{adapter_dir} has no adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)})")


def read_adapter_tensors(path: Path, prefixes: list[str]) -> dict[str, torch.Tensor]:
    """Saved adapter tensors whose name (without peft's ``base_model.model.``) starts with one of ``prefixes``."""

    def wanted(key: str) -> bool:
        return any(key.removeprefix(PEFT_PREFIX).startswith(p + ".") for p in prefixes)

    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return {k.removeprefix(PEFT_PREFIX): handle.get_tensor(k) for k in handle.keys() if wanted(k)}
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix(PEFT_PREFIX): v for k, v in state.items() if wanted(k)}


def _has_delta(layer: LoraLayer) -> bool:
    """True when some active adapter of ``layer`` has non-zero A and B (so merging must change the weight)."""
    for name in layer.active_adapters:
        if name in layer.lora_A and name in layer.lora_B:
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            if bool(a.abs().sum() > 0) and bool(b.abs().sum() > 0):
                return True
    return False


def _inspect_adapter(peft_model: PeftModel) -> tuple[int, set[str], list[str]]:
    """(number of LoRA layers, weight names the merge must change, modules_to_save module names)."""
    n_layers, expected, saved = 0, set(), []
    for name, module in peft_model.named_modules():
        short = name.removeprefix(PEFT_PREFIX)
        if isinstance(module, LoraLayer):
            n_layers += 1
            if _has_delta(module):
                expected.add(f"{short}.weight")
        elif isinstance(module, ModulesToSaveWrapper):
            saved.append(short)
    return n_layers, expected, saved


def _check_changes(before: dict[str, bytes], after: dict[str, bytes], expected: set[str], saved: list[str]) -> None:
    if set(before) != set(after):
        lost, new = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        raise MergeError(f"merge changed the parameter names: lost {lost[:5]}, new {new[:5]}")
    changed = {n for n in before if before[n] != after[n]}
    outside = {n for n in changed if not any(n.startswith(m + ".") for m in saved)}
    unexpected, unchanged = sorted(outside - expected), sorted(expected - outside)
    if unexpected or unchanged:
        raise MergeError(
            f"merge check failed: {len(unexpected)} tensors changed that LoRA does not target {unexpected[:5]}; "
            f"{len(unchanged)} LoRA-targeted weights did not change {unchanged[:5]}"
        )


def _check_saved_modules(merged: torch.nn.Module, adapter_dir: Path, saved: list[str]) -> int:
    """Every modules_to_save parameter equals the adapter's saved tensor; returns how many were checked."""
    if not saved:
        return 0
    stored = read_adapter_tensors(adapter_weight_file(adapter_dir), saved)
    params = {n: p for n, p in merged.named_parameters() if any(n.startswith(m + ".") for m in saved)}
    missing = sorted(set(params) - set(stored))
    if missing:
        raise MergeError(f"adapter in {adapter_dir} lacks saved tensors for {missing[:5]} (modules_to_save)")
    wrong = [n for n, p in params.items() if not torch.equal(p.detach(), stored[n].to(p.dtype))]
    if wrong:
        raise MergeError(f"merged modules_to_save tensors differ from the adapter's saved copy: {wrong[:5]}")
    return len(params)


def merge_lora(base: torch.nn.Module, adapter_dir: Path) -> tuple[torch.nn.Module, MergeReport]:
    """Load the adapter in ``adapter_dir`` onto ``base``, merge it (peft ``merge_and_unload``) and verify it.

    ``base`` is modified in place (peft injects into it); the returned model is the plain merged model.
    """
    before = parameter_digests(base)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    n_layers, expected, saved = _inspect_adapter(peft_model)
    merged = peft_model.merge_and_unload(safe_merge=True)
    after = parameter_digests(merged)
    _check_changes(before, after, expected, saved)
    n_saved = _check_saved_modules(merged, adapter_dir, saved)
    saved_changed = sum(1 for n in after if before[n] != after[n] and any(n.startswith(m + ".") for m in saved))
    return merged, MergeReport(n_layers, len(expected), saved, n_saved, saved_changed)
