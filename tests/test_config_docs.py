"""Recipes explain themselves and parse without model code: field docs, --print-recipe, no transformers import."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, is_dataclass

import yaml

from pancapchain.config import RecipeConfig, describe_recipe, load_recipe
from pancapchain.train.run import main as train_main


def _all_fields(cls, prefix=""):
    for f in fields(cls):
        yield prefix + f.name, f
        if is_dataclass(f.default_factory):  # a nested section
            yield from _all_fields(f.default_factory, prefix + f.name + ".")


def test_every_config_field_has_a_doc():
    found = dict(_all_fields(RecipeConfig))
    undocumented = sorted(k for k, f in found.items() if not str(f.metadata.get("doc", "")).strip())
    assert undocumented == []
    assert {"model.tiny.hidden_size", "mask.tau_g", "train.grad_accum", "data.discover_ratio"} <= set(found)


def test_print_recipe_is_the_merged_recipe_with_each_keys_doc(capsys):
    code = train_main(["--recipe", "recipes/tiny_chain.yaml", "--print-recipe", "train.grad_accum=3"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    at = lines.index("  grad_accum: 3")  # the override, merged over the YAML
    assert lines[at - 1] == "  # micro-batches accumulated into one optimizer step"
    assert "    hidden_size: 128" in lines  # the YAML over the defaults (default 64)
    # the printed text is itself a recipe: it loads back to the same config
    printed = yaml.safe_load(out)
    cfg = load_recipe("recipes/tiny_chain.yaml", ["train.grad_accum=3"])
    assert printed == cfg.to_dict()
    assert describe_recipe(cfg) == out
    n_keys = sum(1 for line in lines if not line.lstrip().startswith("#"))
    assert n_keys == sum(1 for line in lines if line.lstrip().startswith("#"))  # one doc line per key


def test_importing_the_config_does_not_import_transformers():
    code = ("import sys, pancapchain.config as c; c.load_recipe('recipes/tiny_chain.yaml');"
            "print(sorted(m for m in ('transformers', 'peft', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
