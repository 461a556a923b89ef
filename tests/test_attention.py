"""Attention backend and precision chosen by the hardware, logged once, recorded with the run; LoRA-safe GC."""

from __future__ import annotations

import json
import logging
import sys
import types

import pytest
import torch
from conftest import tiny_overrides, write_dataset

from pancapchain.config import ConfigError, load_recipe
from pancapchain.model import build
from pancapchain.model.build import (
    build_trainable,
    resolve_attention,
    runtime_choices,
    select_attention,
    select_dtype,
)
from pancapchain.train.run import run_training


def _fake_cuda(monkeypatch, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def _flash_attn(monkeypatch, importable: bool) -> None:
    # None in sys.modules makes `import flash_attn` raise ImportError, like a missing or broken wheel
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn") if importable else None)


def test_cpu_auto_is_sdpa_and_fp32_without_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert select_attention("auto", torch.float32) == "sdpa"
    assert caplog.records == []
    assert select_dtype("auto") == torch.float32


def test_cuda_with_flash_attn_picks_flash_attention_2(monkeypatch):
    _fake_cuda(monkeypatch)
    _flash_attn(monkeypatch, importable=True)
    assert select_dtype("auto") == torch.bfloat16
    assert resolve_attention("auto", torch.bfloat16) == ("flash_attention_2", None)
    # FA2 rejects fp32 weights: fall back and say why
    attn, why = resolve_attention("auto", torch.float32)
    assert attn == "sdpa" and "fp32" in why


def test_missing_flash_attn_falls_back_to_sdpa_with_one_warning(monkeypatch, caplog):
    _fake_cuda(monkeypatch)
    _flash_attn(monkeypatch, importable=False)
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert select_attention("auto", torch.bfloat16) == "sdpa"
        assert select_attention("flash_attention_2", torch.bfloat16) == "sdpa"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("flash-attn not importable" in m and "using sdpa" in m for m in messages)
    assert resolve_attention("eager") == ("eager", None)  # explicit non-FA choices are kept as they are


def test_gpu_without_bf16_picks_fp16_and_rejects_bf16_at_validation(monkeypatch):
    _fake_cuda(monkeypatch, bf16=False)
    assert select_dtype("auto") == torch.float16
    with pytest.raises(ConfigError, match="no bf16 support"):
        load_recipe(None, ["model.precision=bf16"])


def test_fp16_on_a_cpu_machine_fails_at_validation():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        load_recipe(None, ["model.precision=fp16"])


def test_backend_is_applied_and_recorded_in_metrics_and_checkpoint(tmp_path):
    train = write_dataset(tmp_path / "data", n=2)
    out = tmp_path / "out"
    cfg = load_recipe(None, tiny_overrides(train, out, **{"train.max_steps": "1"}))
    assert runtime_choices(cfg) == {"attn_implementation": "sdpa", "torch_dtype": "float32",
                                    "quantization": "none", "device": "cpu"}
    metrics = run_training(cfg)
    assert metrics["attn_implementation"] == "sdpa" and metrics["torch_dtype"] == "float32"
    for folder in (out, out / "checkpoint-1"):
        meta = json.loads((folder / "pancap_meta.json").read_text())
        assert meta["attn_implementation"] == "sdpa" and meta["device"] == "cpu"


def test_gradient_checkpointing_is_non_reentrant_with_grad_carrying_inputs(tmp_path):
    cfg = load_recipe(None, tiny_overrides(tmp_path / "x.jsonl", tmp_path / "out",
                                           **{"model.gradient_checkpointing": "true"}))
    model, processor = build_trainable(cfg, ["red square blue square"] * 20)
    base = model.get_base_model()
    assert base.config.text_config._attn_implementation == "sdpa"
    layers = base.model.language_model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert all(layer._gradient_checkpointing_func.keywords == {"use_reentrant": False} for layer in layers)
    ids = processor.tokenizer("red square", return_tensors="pt")["input_ids"]
    # frozen embeddings would give inputs without grad: the hook makes them carry grad into the LoRA layers
    assert base.get_input_embeddings()(ids).requires_grad
