"""Recipes: every shipped YAML validates; unknown keys and contradictions fail with what to change."""

from pathlib import Path

import pytest

from pancapchain.config import ConfigError, active_stages, load_recipe

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_parses(path, tmp_path):
    # Real bases are local paths that do not exist here: point them at an empty directory.
    cfg = load_recipe(path, [f"model.base={tmp_path}"] if "tiny" not in path.name else [])
    extra = ["segcap", "region"] if path.name == "tiny_mask.yaml" else []  # the box tasks: tiny_mask only
    full_finetune = path.name == "tiny_chain.yaml"  # the tiny base is random: trained in full, not through LoRA
    assert cfg.lora.enabled != full_finetune and cfg.model.train_language_model == full_finetune
    assert active_stages(cfg) == ["localize", "label", "discover", "caption"] + extra


def test_paper_recipe_matches_the_paper(tmp_path):
    cfg = load_recipe(Path("recipes/llava15_13b_lora.yaml"), [f"model.base={tmp_path}"])
    assert (cfg.lora.r, cfg.lora.alpha, cfg.train.learning_rate, cfg.train.projector_lr) == (128, 256, 2e-4, 2e-5)
    assert cfg.model.precision == "bf16" and cfg.model.gradient_checkpointing and cfg.data.max_length == 2048
    assert cfg.train.per_device_batch_size * cfg.train.grad_accum * 4 == 128
    assert cfg.train.deepspeed.endswith("zero2.json")


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_recipe(None, ["train.lerning_rate=1e-4"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="max_steps"):
        load_recipe(None, ["train.max_steps=ten"])


def test_all_problems_are_listed_at_once():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["model.quantization=4bit", "lora.enabled=false", "data.box_format=xyxy",
                           "data.stages={localize: 1.0, segment: 1.0}", "model.base=/does/not/exist"])
    text = str(err.value)
    for needle in ("lora.enabled=true", "data.box_format", "segment", "/does/not/exist"):
        assert needle in text


def test_stage_weights_select_stages():
    cfg = load_recipe(None, ["data.stages={localize: 0.0, label: 2.0, discover: 0, caption: 1.0}"])
    assert active_stages(cfg) == ["label", "caption"]


def test_discover_ratio_has_one_rule_for_the_recipe_and_the_stage_builder():
    from pancapchain.data.stages import discover_ratio_problem

    assert discover_ratio_problem((0.3, 0.7)) is None and discover_ratio_problem([0.0, 0.0]) is None
    for bad in ((0.8, 0.2), (0.1,), (-0.1, 0.5), ("a", 1)):
        assert "discover_ratio must be [low, high]" in discover_ratio_problem(bad)
    with pytest.raises(ConfigError, match=r"data.discover_ratio must be \[low, high\]"):
        load_recipe(None, ["data.discover_ratio=[0.8,0.2]"])
