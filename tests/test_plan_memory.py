"""The memory planner: exact parameter counts, DeepSpeed's own estimators, hand-computed terms, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from pancapchain.cli import main as cli_main
from pancapchain.train.memory import (
    BUILTIN_SHAPES,
    GIB,
    NF4_BYTES_PER_PARAM,
    LlavaShape,
    PlanSettings,
    activation_bytes,
    count_params,
    frozen_weight_bytes,
    load_shape,
    max_batch_that_fits,
    model_states_bytes,
    plan_memory,
)


def _config_dict(shape: LlavaShape) -> dict:
    """A llava-hf style config.json for ``shape`` (vision keys left to LlavaConfig's CLIP-L/336 defaults)."""
    return {
        "model_type": "llava",
        "text_config": {
            "model_type": "llama", "hidden_size": shape.hidden, "intermediate_size": shape.ffn,
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads, "vocab_size": shape.vocab, "tie_word_embeddings": False,
        },
    }


def _meta_model(shape: LlavaShape) -> LlavaForConditionalGeneration:
    cfg = LlavaConfig.from_dict(_config_dict(shape))
    with torch.device("meta"):  # real module tree, no memory
        return LlavaForConditionalGeneration(cfg)


@pytest.mark.parametrize("name", sorted(BUILTIN_SHAPES))
def test_parameter_counts_equal_the_real_module_tree(name):
    shape = BUILTIN_SHAPES[name]
    model = _meta_model(shape)
    counts = count_params(shape, lora_r=128)
    by_role = {"llm_linear": 0, "llm_other": 0, "vision": 0, "projector": 0}
    lora = 0
    for module_name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if "vision_tower" in module_name:
            by_role["vision"] += own
        elif "multi_modal_projector" in module_name:
            by_role["projector"] += own
        elif ".language_model." in f".{module_name}." and isinstance(module, torch.nn.Linear):
            by_role["llm_linear"] += own
            lora += 128 * (module.in_features + module.out_features)
        else:
            by_role["llm_other"] += own
    assert by_role == {k: getattr(counts, k) for k in by_role}
    assert counts.lora == lora
    assert counts.frozen == sum(p.numel() for p in model.parameters())
    # DeepSpeed's "largest layer": the most parameters held directly by one module (here the embeddings)
    assert counts.largest_module == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def test_13b_numbers_match_the_derivation_in_performance_anchors():
    counts = count_params(BUILTIN_SHAPES["13b"], lora_r=128)
    # per layer: r * (4 * (d + d) + 3 * (d + ffn)) = 128 * (40960 + 56832); 40 layers
    assert counts.lora == 128 * (4 * 2 * 5120 + 3 * (5120 + 13824)) * 40 == 500_695_040
    assert counts.projector == 1024 * 5120 + 5120 + 5120 * 5120 + 5120  # ~31M
    assert 25.5 < counts.frozen * 2 / 1e9 < 27.0  # "bf16 LLM ~26 GB plus CLIP ~0.6 GB"


@pytest.mark.parametrize("gpus,nodes", [(1, 1), (4, 1), (8, 1), (8, 2)])
def test_full_finetuning_equals_deepspeed_estimators(gpus, nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    counts = count_params(BUILTIN_SHAPES["13b"], lora_r=128)
    total, largest = counts.frozen, counts.largest_module
    per_node = gpus // nodes
    _, ds_zero2 = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=False)
    _, ds_zero3, _ = estimate_zero3_model_states_mem_needs(
        total, largest, per_node, nodes, cpu_offload=False, cpu_offload_params=False
    )
    # every parameter trainable, nothing frozen: the planner's model states are DeepSpeed's
    assert int(model_states_bytes(0, total, largest, zero=2, gpus=gpus)) == ds_zero2
    assert int(model_states_bytes(0, total, largest, zero=3, gpus=gpus)) == ds_zero3


def test_deepspeed_all_params_estimate_overstates_lora():
    counts = count_params(BUILTIN_SHAPES["13b"], lora_r=128)
    full = model_states_bytes(0, counts.frozen, counts.largest_module, zero=2, gpus=8)
    lora = model_states_bytes(frozen_weight_bytes(counts, False), counts.trainable, counts.largest_module, 2, 8)
    assert full / GIB > 50 and lora / GIB < 28  # ~53 GiB vs ~27 GiB per GPU on 8 GPUs


def test_activation_terms_by_hand_on_a_toy_shape():
    toy = LlavaShape("toy", layers=2, hidden=8, ffn=16, heads=2, kv_heads=1, head_dim=4, vocab=50,
                     tie_embeddings=False, vision_layers=1, vision_hidden=4, vision_ffn=8, image_size=8, patch_size=4)
    s = PlanSettings(gpus=1, gpu_mem_gib=1, zero=2, lora_r=2, seq_len=10, batch_size=3, lora_dropout=False)
    # per token per layer: attention 8+8+8+2*4+2*8 = 48, mlp 2*8+4*16 = 80, lora 7*2 = 14 -> 142 values * 2 B
    per_layer = 142 * 2
    image_tokens = 4  # (8/4)^2
    projector = 3 * image_tokens * (4 + 2 * 8) * 2
    vision = 3 * (image_tokens + 1) * (5 * 4 + 2 * 8) * 2
    assert activation_bytes(toy, s) == 30 * 2 * per_layer + projector + vision
    ckpt = replace(s, grad_ckpt=True)
    assert activation_bytes(toy, ckpt) == 30 * (2 * 8 * 2 + per_layer + 2 * 8 * 2) + projector + vision
    # LoRA dropout keeps a dropped bf16 copy + 1-byte mask of each adapted input: 6*8 + 16 = 64 values
    with_dropout = replace(s, lora_dropout=True)
    assert activation_bytes(toy, with_dropout) - activation_bytes(toy, s) == 30 * 2 * 64 * 3


def test_sharding_quantization_and_checkpointing_move_the_right_terms():
    shape = BUILTIN_SHAPES["13b"]
    base = PlanSettings(gpus=8, gpu_mem_gib=40, zero=2, lora_r=128, grad_ckpt=True, batch_size=2)
    z2, z3 = plan_memory(shape, base), plan_memory(shape, replace(base, zero=3))
    frozen = frozen_weight_bytes(z2.params, qlora=False)
    assert z2.weights == frozen and z3.weights == frozen / 8 + 4 * z2.params.largest_module
    assert z3.trainable_state == 18 * z2.params.trainable / 8
    assert z2.trainable_state == 2 * z2.params.trainable + 18 * z2.params.trainable / 8
    q = plan_memory(shape, replace(base, qlora=True))
    saved = z2.params.llm_linear * (2 - NF4_BYTES_PER_PARAM)
    assert q.weights == pytest.approx(z2.weights - saved)
    no_ckpt = plan_memory(shape, replace(base, grad_ckpt=False))
    assert no_ckpt.activations > 10 * z2.activations
    assert plan_memory(shape, replace(base, zero=3, qlora=True)).verdict == "UNSUPPORTED"


def test_verdict_thresholds_and_largest_batch():
    shape = BUILTIN_SHAPES["7b"]
    s = PlanSettings(gpus=4, gpu_mem_gib=1000, zero=2, lora_r=64, grad_ckpt=True, batch_size=2)
    total = plan_memory(shape, s).total / GIB
    assert plan_memory(shape, replace(s, gpu_mem_gib=total / 0.9 + 0.01)).verdict == "FITS"
    assert plan_memory(shape, replace(s, gpu_mem_gib=total / 0.95)).verdict == "TIGHT"
    assert plan_memory(shape, replace(s, gpu_mem_gib=total - 0.01)).verdict == "DOES NOT FIT"
    s40 = replace(s, gpu_mem_gib=40)
    best = max_batch_that_fits(shape, s40)
    assert best >= 1
    assert plan_memory(shape, replace(s40, batch_size=best)).verdict == "FITS"
    assert plan_memory(shape, replace(s40, batch_size=best + 1)).verdict != "FITS"


def test_local_config_json_gives_the_builtin_shape(tmp_path):
    shape = BUILTIN_SHAPES["13b"]
    (tmp_path / "config.json").write_text(json.dumps(_config_dict(shape)))
    assert replace(load_shape(str(tmp_path)), name=shape.name) == shape
    assert replace(load_shape(str(tmp_path / "config.json")), name=shape.name) == shape
    with pytest.raises(FileNotFoundError, match="30b"):
        load_shape("30b")


def test_cli_prints_verdict_and_numbers_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = cli_main(["plan-memory", "--model", "13b", "--gpus", "8", "--gpu-mem", "40", "--zero", "2",
                     "--lora-r", "128", "--grad-ckpt", "--batch-size", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out.read_text())
    expected = plan_memory(BUILTIN_SHAPES["13b"], PlanSettings(8, 40, 2, 128, grad_ckpt=True, batch_size=2))
    assert plan["verdict"] == expected.verdict == "FITS"
    assert plan["per_gpu_gib"]["total"] == round(expected.total / GIB, 3)
    assert f"{expected.total / GIB:8.2f}" in text and "verdict: FITS" in text
    assert "which settings fit" in text and len(plan["alternatives"]) == 8
    assert cli_main(["plan-memory", "--model", str(tmp_path / "nope"), "--gpus", "1", "--gpu-mem", "24",
                     "--zero", "2", "--lora-r", "8"]) == 2
