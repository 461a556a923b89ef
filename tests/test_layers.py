"""Dependencies point one way: the imports issue 14 removed stay removed (read from the source, nothing runs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pancapchain"


def imported_modules(path: Path) -> set[str]:
    """Every ``pancapchain...`` module a file imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("pancapchain")}


@pytest.mark.parametrize(("below", "above"), [
    ("config.py", "pancapchain.model"),  # parsing a recipe loads no transformers
    ("train/trainer.py", "pancapchain.mask"),  # the trainer knows auxiliary losses only through train/aux.py
    ("infer/masks.py", "pancapchain.mask.supervision"),  # inference does not import training supervision
    ("data/rle.py", "pancapchain.eval"),
])
def test_file_does_not_import_upward(below, above):
    assert not {m for m in imported_modules(PKG / below) if m.startswith(above)}


def test_mask_package_does_not_import_eval():
    offenders = {p.name: m for p in (PKG / "mask").glob("*.py") for m in imported_modules(p) if ".eval" in m}
    assert offenders == {}
