"""QLoRA: only the language model's linear layers go 4-bit (bitsandbytes runs on CPU here), the rest stays put."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides, write_dataset
from transformers import LlavaForConditionalGeneration
from transformers.quantizers.quantizers_utils import should_convert_module

from pancapchain.config import TinyModelConfig, load_recipe
from pancapchain.model.quant import (
    QuantizationError,
    bnb_4bit_config,
    check_qlora_zero_stage,
    in_language_model,
    is_4bit_linear,
    load_4bit,
    skip_prefixes,
    skip_prefixes_for_config,
    verify_4bit_layout,
    zero_stage,
)
from pancapchain.model.tiny import build_tiny_model, build_tokenizer
from pancapchain.train.run import build_run
from pancapchain.train.trainer import token_losses

EXPECTED_SKIP = ["lm_head", "model.multi_modal_projector", "model.vision_tower"]


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory):
    tok = build_tokenizer(["a red square and a blue square"] * 20, vocab_size=300)
    # widths are multiples of 64 (bitsandbytes' block size): its CPU inference kernel needs that
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=64, intermediate_size=128, vision_hidden_size=16,
                                                  image_size=32))
    path = tmp_path_factory.mktemp("tiny_base")
    model.save_pretrained(path)
    return path


def test_skip_list_comes_from_the_module_tree_for_tiny_and_13b_shapes(tiny_base_dir):
    from transformers import LlamaConfig, LlavaConfig

    tiny = LlavaForConditionalGeneration.from_pretrained(tiny_base_dir)
    assert skip_prefixes(tiny) == EXPECTED_SKIP
    llava13b = LlavaConfig(text_config=LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                                   num_attention_heads=40, vocab_size=32064))
    assert skip_prefixes_for_config(llava13b) == EXPECTED_SKIP  # built on the meta device: no memory


def test_llava_era_short_names_would_quantize_the_vision_tower():
    tower_fc = "model.vision_tower.encoder.layers.0.mlp.fc1"
    projector = "model.multi_modal_projector.linear_1"
    short = ["vision_tower", "mm_projector", "multi_modal_projector"]
    # transformers 5 matches skip names from the start of the path (or as a suffix): short names miss
    assert should_convert_module(tower_fc, short) and should_convert_module(projector, short)
    assert not should_convert_module(tower_fc, EXPECTED_SKIP)
    assert not should_convert_module(projector, EXPECTED_SKIP)
    assert should_convert_module("model.language_model.layers.0.mlp.down_proj", EXPECTED_SKIP)


def test_bnb_config_is_nf4_double_quant_in_compute_dtype():
    cfg = bnb_4bit_config(torch.bfloat16, EXPECTED_SKIP)
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16 and cfg.bnb_4bit_quant_storage == torch.bfloat16
    assert cfg.llm_int8_skip_modules == EXPECTED_SKIP


def test_4bit_load_quantizes_exactly_the_language_model_linears(tiny_base_dir):
    model = load_4bit(tiny_base_dir, torch.float32, "sdpa")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {n for n, m in linears.items() if is_4bit_linear(m)}
    assert quantized == {n for n in linears if in_language_model(n)}
    assert len(quantized) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    for name, module in model.named_modules():
        if name.startswith(("model.vision_tower", "model.multi_modal_projector", "lm_head")):
            assert all(p.dtype == torch.float32 for p in module.parameters(recurse=False)), name
    assert verify_4bit_layout(model) == {"quantized": 14, "full_precision": len(linears) - 14}


def test_wrong_skip_list_is_caught_by_the_layout_check(tiny_base_dir):
    wrong = LlavaForConditionalGeneration.from_pretrained(
        tiny_base_dir, quantization_config=bnb_4bit_config(torch.float32, ["vision_tower", "mm_projector"]),
        device_map={"": "cpu"})
    with pytest.raises(QuantizationError, match="vision_tower"):
        verify_4bit_layout(wrong)
    with pytest.raises(QuantizationError, match="no 4-bit layer"):
        verify_4bit_layout(LlavaForConditionalGeneration.from_pretrained(tiny_base_dir))


def test_qlora_trains_lora_and_projector_while_4bit_weights_stay_fixed(tmp_path):
    train = write_dataset(tmp_path / "data", n=2)
    overrides = tiny_overrides(train, tmp_path / "out", **{
        "train.max_steps": "2", "train.warmup_ratio": "0.0", "model.quantization": "4bit",
        "model.gradient_checkpointing": "true", "model.tiny.hidden_size": "64", "model.tiny.intermediate_size": "128"})
    run = build_run(load_recipe(None, overrides))
    model = run.trainer.model
    modules = dict(model.named_modules())
    # packed 4-bit codes reinterpreted as float32 may spell NaN: compare their bits, not their values
    packed = {n: m.weight.detach().view(torch.int32).clone() for n, m in modules.items() if is_4bit_linear(m)}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(packed) == 14
    for name, bits in packed.items():  # 4 bits per weight, stored in the compute dtype (quant_storage)
        weight = modules[name].weight
        assert weight.dtype == torch.float32 and not weight.requires_grad
        assert bits.numel() * 4 * 2 == modules[name].in_features * modules[name].out_features
    assert any("multi_modal_projector.modules_to_save" in n for n in before)
    run.trainer.train()
    after = dict(model.named_parameters())
    assert all(torch.equal(bits, modules[n].weight.view(torch.int32)) for n, bits in packed.items())
    moved = [n for n, old in before.items() if "lora_A" not in n and not torch.equal(old, after[n])]
    assert len(moved) == len([n for n in before if "lora_A" not in n])  # every lora_B and the projector moved
    losses = [h["loss"] for h in run.trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    # the saved tiny base is the full-precision one (checkpoints reload without bitsandbytes)
    base_cfg = json.loads((tmp_path / "out" / "tiny_base" / "config.json").read_text())
    assert "quantization_config" not in base_cfg
    meta = json.loads((tmp_path / "out" / "checkpoint-2" / "pancap_meta.json").read_text())
    assert meta["quantization"] == "4bit"


def test_quantized_forward_stays_close_to_full_precision(tiny_base_dir):
    full = LlavaForConditionalGeneration.from_pretrained(tiny_base_dir).eval()
    q = load_4bit(tiny_base_dir, torch.float32, "sdpa").eval()
    ids = torch.randint(5, 250, (2, 12))
    with torch.no_grad():
        a, b = full(input_ids=ids).logits, q(input_ids=ids).logits
    labels = ids.clone()
    la, lb = token_losses(a, labels)[0].mean(), token_losses(b, labels)[0].mean()
    assert not torch.equal(a, b) and abs(float(la - lb)) < 0.05 * float(la)


def test_zero3_and_prequantized_bases_are_refused(tmp_path, monkeypatch, tiny_base_dir):
    z2, z3 = tmp_path / "z2.json", tmp_path / "z3.json"
    z2.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    z3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert zero_stage(str(z2)) == 2 and zero_stage("") == 0
    check_qlora_zero_stage(str(z2))
    with pytest.raises(QuantizationError, match="ZeRO-3"):
        check_qlora_zero_stage(str(z3))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(z3))  # launched with an accelerate ZeRO-3 config
    with pytest.raises(QuantizationError, match="multi_gpu_zero2"):
        check_qlora_zero_stage("")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    prequantized = tmp_path / "prequantized"
    load_4bit(tiny_base_dir, torch.float32, "sdpa").save_pretrained(prequantized)
    with pytest.raises(QuantizationError, match="already quantized"):
        load_4bit(prequantized, torch.float32, "sdpa")
