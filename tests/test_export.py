"""``pancapchain export``: merged llava-hf folders that plain transformers loads and that behave like the checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides, write_dataset
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from pancapchain.cli import main as cli_main
from pancapchain.config import load_recipe
from pancapchain.data.prompts import load_prompts
from pancapchain.model.chat import render_prompt
from pancapchain.model.checkpoint import load_checkpoint
from pancapchain.model.export import EXPORT_FORMAT, ExportError, export_checkpoint
from pancapchain.model.staging import OutputDirError
from pancapchain.train.run import run_training

GOLDEN_KEYS = Path(__file__).parent / "golden" / "llava_hf_keys.txt"
STAGE_FIELDS = {
    "localize": {},
    "label": {"boxes": "<box>[[100, 200, 500, 500]]</box>, <box>[[550, 300, 900, 800]]</box>"},
    "discover": {"entities": "red square <box>[[100, 200, 500, 500]]</box>"},
    "caption": {"entities": "red square <box>[[100, 200, 500, 500]]</box>, blue square <box>[[550, 300, 900, 800]]</box>"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of 3 steps at a high learning rate (LoRA and projector really move); checkpoint-2 kept."""
    root = tmp_path_factory.mktemp("export_run")
    train = write_dataset(root / "data", n=4)
    out = root / "run"
    overrides = tiny_overrides(train, out, **{
        "train.max_steps": "3", "train.save_steps": "2", "train.warmup_ratio": "0.0",
        "train.learning_rate": "0.05", "train.projector_lr": "0.05"})
    run_training(load_recipe(None, overrides))
    return out


@pytest.fixture(scope="module")
def image(trained) -> Image.Image:
    return Image.open(trained.parent / "data" / "images" / "s1.png").convert("RGB")


@pytest.fixture(scope="module")
def fp32_export(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "fp32"
    return export_checkpoint(trained, out, dtype="fp32", echo=lambda _: None)


def _inputs(processor, image: Image.Image, prompt: str, system: str | None) -> dict:
    text = render_prompt(processor, prompt, system)
    return dict(processor(images=image, text=text, return_tensors="pt"))


def _greedy(model, inputs: dict, n: int = 16) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def _file_keys(folder: Path) -> dict[str, torch.dtype]:
    keys = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            keys.update({k: handle.get_tensor(k).dtype for k in handle.keys()})
    return keys


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*", "tiny_base"))
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fp32_export_loads_cleanly_and_matches_base_plus_adapter(trained, fp32_export, image):
    out = fp32_export.out
    model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    processor = AutoProcessor.from_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                 "processor_config.json", "recipe.yaml", "pancap_meta.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == ["LlavaForConditionalGeneration"]
    meta = json.loads((out / "pancap_meta.json").read_text())
    assert meta["format"] == EXPORT_FORMAT and meta["base_model"] == "tiny" and meta["prompt_version"] == "v1"
    assert meta["box_format"] == "asmv2" and meta["system_prompt"]
    assert meta["checkpoint_step"] is None  # the final save of a run records no trainer_state.json
    assert meta["recipe"]["train"]["max_steps"] == 3 and meta["dtype"] == "float32"
    # R11: every LoRA-targeted weight changed (2 layers x 7 linears), the 4 projector tensors came from the adapter
    assert meta["merge"]["lora_modules"] == meta["merge"]["lora_tensors_changed"] == 14
    assert meta["merge"]["saved_modules"] == ["model.multi_modal_projector"]
    assert meta["merge"]["saved_tensors"] == meta["merge"]["saved_tensors_changed"] == 4

    reference = load_checkpoint(trained)  # base + adapter (peft), fp32
    prompts = load_prompts("v1")
    prompt = prompts.render("localize")
    assert render_prompt(processor, prompt, meta["system_prompt"]) == render_prompt(
        reference.processor, prompt, meta["system_prompt"])
    inputs = _inputs(processor, image, prompt, meta["system_prompt"])
    with torch.no_grad():
        logits_export = model(**inputs).logits
        logits_ref = reference.model(**inputs).logits
    assert (logits_export - logits_ref).abs().max().item() < 1e-4
    tokens = _greedy(model, inputs)
    assert tokens == _greedy(reference.model, inputs) and len(tokens) > 0

    # the comparison is not vacuous: the adapter moves the logits far more than the tolerance
    base = AutoModelForImageTextToText.from_pretrained(trained / "base")
    with torch.no_grad():
        assert (base(**inputs).logits - logits_ref).abs().max().item() > 0.1
    # the trained projector is inside the export and differs from the base's
    exported = dict(model.named_parameters())
    with safe_open(str(trained / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            if "multi_modal_projector" in key:
                name = key.removeprefix("base_model.model.")
                assert torch.equal(exported[name], handle.get_tensor(key))
                assert not torch.equal(exported[name], dict(base.named_parameters())[name])


def test_chain_gives_the_same_outputs_from_export_and_checkpoint(trained, fp32_export, image):
    from pancapchain.infer.chain import ChainState, PancapChain
    from pancapchain.infer.generation import GenerationOptions

    options = GenerationOptions(max_new_tokens={"localize": 12, "label": 12, "discover": 12, "caption": 16})
    from_checkpoint = PancapChain.from_pretrained(str(trained)).run([ChainState("s1", image)], options)
    from_export = PancapChain.from_pretrained(str(fp32_export.out)).run([ChainState("s1", image)], options)
    assert set(from_export[0].stages) == {"localize", "label", "discover", "caption"}
    assert from_export == from_checkpoint  # raw text, prompts, parsed entities and caption of every stage


def test_four_stage_prompts_generate_the_same_tokens(trained, fp32_export, image):
    reference = load_checkpoint(trained)
    exported = load_checkpoint(fp32_export.out)  # an export goes through the same loader as a checkpoint
    assert exported.meta["format"] == EXPORT_FORMAT and type(exported.model).__name__ == "LlavaForConditionalGeneration"
    prompts = load_prompts("v1")
    for stage, fields in STAGE_FIELDS.items():
        inputs = _inputs(exported.processor, image, prompts.render(stage, **fields), prompts.system)
        assert _greedy(exported.model, inputs, 12) == _greedy(reference.model, inputs, 12), stage


@pytest.mark.parametrize(("flag", "dtype", "name"), [("bf16", torch.bfloat16, "bfloat16"),
                                                     ("fp16", torch.float16, "float16")])
def test_dtype_is_honoured_from_an_intermediate_checkpoint(trained, tmp_path, image, flag, dtype, name):
    result = export_checkpoint(trained / "checkpoint-2", tmp_path / flag, dtype=flag, echo=lambda _: None)
    keys = _file_keys(result.out)
    assert keys and set(keys.values()) == {dtype}
    assert json.loads((result.out / "config.json").read_text())["dtype"] == name
    assert result.meta["dtype"] == name and result.meta["checkpoint_step"] == 2
    model = AutoModelForImageTextToText.from_pretrained(result.out, dtype="auto")
    assert model.dtype == dtype
    # the intermediate checkpoint's own projector (not the final one) is what got exported
    with safe_open(str(trained / "checkpoint-2" / "adapter_model.safetensors"), framework="pt") as handle:
        stored = handle.get_tensor("base_model.model.model.multi_modal_projector.linear_2.weight")
    assert torch.equal(model.model.multi_modal_projector.linear_2.weight, stored.to(dtype))


def test_full_weight_checkpoint_without_lora_is_resaved(trained, tmp_path, image):
    train = trained.parent / "data" / "samples.jsonl"
    run = tmp_path / "full"
    run_training(load_recipe(None, tiny_overrides(train, run, **{
        "train.max_steps": "2", "train.warmup_ratio": "0.0", "train.projector_lr": "0.05", "lora.enabled": "false"})))
    result = export_checkpoint(run, tmp_path / "out", dtype="fp32", echo=lambda _: None)
    assert result.merge is None and result.meta["merge"] is None
    reference = load_checkpoint(run)
    model, info = AutoModelForImageTextToText.from_pretrained(result.out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = _inputs(reference.processor, image, load_prompts("v1").render("localize"), None)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference.model(**inputs).logits)


def test_key_names_match_the_golden_llava_hf_list(fp32_export):
    golden = [line for line in GOLDEN_KEYS.read_text().splitlines() if line and not line.startswith("#")]
    assert sorted(_file_keys(fp32_export.out)) == golden


def test_extra_module_is_copied_and_listed(trained, tmp_path):
    ckpt = _copy_checkpoint(trained, tmp_path / "ckpt")
    save_file({"conv.weight": torch.arange(12.0).reshape(3, 4)}, str(ckpt / "mask_head.safetensors"))
    (ckpt / "mask_head.json").write_text(json.dumps({"type": "sgdiff", "hidden": 4}))
    result = export_checkpoint(ckpt, tmp_path / "out", dtype="fp32", echo=lambda _: None)
    for name in ("mask_head.safetensors", "mask_head.json"):
        assert (result.out / name).read_bytes() == (ckpt / name).read_bytes()
    assert result.meta["extra_modules"] == {"mask_head": {"weights": "mask_head.safetensors",
                                                          "config": "mask_head.json"}}
    assert json.loads((result.out / "pancap_meta.json").read_text())["extra_modules"] == result.meta["extra_modules"]
    trained_meta = json.loads((ckpt / "pancap_meta.json").read_text())  # what inference reads from an export too
    assert [result.meta[k] for k in ("chain_rows", "mask_stages")] == [trained_meta[k] for k in ("chain_rows",
                                                                                                 "mask_stages")]

    (ckpt / "mask_head.json").unlink()
    with pytest.raises(ExportError, match="mask_head.safetensors has no mask_head.json"):
        export_checkpoint(ckpt, tmp_path / "out2", dtype="fp32", echo=lambda _: None)
    assert not (tmp_path / "out2").exists()


def _broken(trained: Path, tmp_path: Path, what: str) -> tuple[Path, dict]:
    ckpt = _copy_checkpoint(trained, tmp_path / f"ckpt_{what}")
    if what in ("adapter_config.json", "adapter_model.safetensors", "pancap_meta.json", "recipe.yaml"):
        (ckpt / what).unlink()
        return ckpt, {}
    if what == "base":
        meta = json.loads((ckpt / "pancap_meta.json").read_text())
        meta.pop("base_in_checkpoint")
        meta["base_model"] = str(tmp_path / "no" / "such" / "base")
        (ckpt / "pancap_meta.json").write_text(json.dumps(meta))
        return ckpt, {}
    assert what == "--base"
    return ckpt, {"base": tmp_path / "missing_base"}


@pytest.mark.parametrize(("what", "message"), [
    ("adapter_config.json", "missing its adapter"),
    ("adapter_model.safetensors", "missing its adapter weights"),
    ("pancap_meta.json", "no pancap_meta.json"),
    ("recipe.yaml", "no recipe.yaml"),
    ("base", "base model of .* not found.*pass --base"),
    ("--base", "--base .*missing_base does not exist"),
])
def test_bad_checkpoints_fail_clearly_and_write_nothing(trained, tmp_path, what, message):
    ckpt, kwargs = _broken(trained, tmp_path, what)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export_checkpoint(ckpt, out, dtype="fp32", echo=lambda _: None, **kwargs)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind


def test_non_empty_out_needs_force_and_the_cli_reports_errors(trained, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = _snapshot(out)
    with pytest.raises(OutputDirError, match="already holds files.*--force"):
        export_checkpoint(trained, out, dtype="fp32", echo=lambda _: None)
    assert _snapshot(out) == before

    assert cli_main(["export", "--checkpoint", str(trained), "--out", str(out), "--dtype", "fp32"]) == 2
    assert "already holds files" in capsys.readouterr().err and _snapshot(out) == before
    assert cli_main(["export", "--checkpoint", str(trained), "--out", str(trained / "sub"), "--force"]) == 2
    assert "overlaps the input folder" in capsys.readouterr().err and not (trained / "sub").exists()

    assert cli_main(["export", "--checkpoint", str(trained), "--out", str(out), "--dtype", "fp32", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "merged LoRA into 14/14 targeted weights" in printed and "export written to" in printed
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert json.loads((out / "pancap_meta.json").read_text())["format"] == EXPORT_FORMAT


def test_qlora_checkpoint_is_merged_into_an_unquantized_base(trained, tmp_path, image, capsys):
    train = trained.parent / "data" / "samples.jsonl"
    run = tmp_path / "qlora"
    run_training(load_recipe(None, tiny_overrides(train, run, **{
        "train.max_steps": "2", "train.warmup_ratio": "0.0", "train.learning_rate": "0.05",
        "train.projector_lr": "0.05", "model.quantization": "4bit"})))
    assert yaml.safe_load((run / "recipe.yaml").read_text())["model"]["quantization"] == "4bit"
    out = tmp_path / "out"
    assert cli_main(["export", "--checkpoint", str(run), "--out", str(out), "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "trained on a 4bit (QLoRA) base: merging into the base reloaded unquantized in fp32" in printed
    assert "merged LoRA into 14/14 targeted weights" in printed
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert json.loads((out / "pancap_meta.json").read_text())["training_quantization"] == "4bit"
    assert set(_file_keys(out).values()) == {torch.float32}
    # the merge is exact: the export equals the unquantized base + the QLoRA adapter
    reference = load_checkpoint(run)
    model = AutoModelForImageTextToText.from_pretrained(out)
    inputs = _inputs(reference.processor, image, load_prompts("v1").render("localize"), None)
    with torch.no_grad():
        assert (model(**inputs).logits - reference.model(**inputs).logits).abs().max().item() < 1e-4

    # a base stored quantized is refused: merging into quantized weights is never done
    base_config = json.loads((run / "base" / "config.json").read_text())
    base_config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (run / "base" / "config.json").write_text(json.dumps(base_config))
    with pytest.raises(ExportError, match="stored quantized"):
        export_checkpoint(run, tmp_path / "out2", dtype="bf16", echo=lambda _: None)
