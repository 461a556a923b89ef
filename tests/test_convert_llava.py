"""``pancapchain convert-llava``: a tiny original-format LLaVA checkpoint, written here by hand, -> llava-hf.

The source is a tiny llava-hf model M; its tensors are renamed to the original LLaVA names (``model.layers``,
``model.mm_projector.0/2``, ``model.vision_tower.vision_tower.vision_model``), its vocabulary cut back to a
tokenizer without ``<image>``/``<pad>``, and written with an original config.json. Converting it must give
back a model whose logits equal M's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_dataset
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPConfig,
    PreTrainedTokenizerFast,
)
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from pancapchain.cli import main as cli_main
from pancapchain.config import TinyModelConfig
from pancapchain.model.chat import render_prompt
from pancapchain.model.convert_llava import CONVERT_RECORD, ConvertError, add_llava_tokens, convert_llava
from pancapchain.model.staging import OutputDirError
from pancapchain.model.tiny import build_processor, build_tiny_model

HUB_TOWER = "openai/clip-vit-large-patch14-336"
GOLDEN_KEYS = Path(__file__).parent / "golden" / "llava_hf_keys.txt"
TINY = TinyModelConfig(hidden_size=32, intermediate_size=64, vision_hidden_size=16, image_size=32, patch_size=8)
TEXTS = ["a red square and a blue square", "The image shows a green square", "Please describe this image"] * 4
PROMPT = "Please describe this image"


def _original_tokenizer(folder: Path) -> int:
    """A byte-level BPE like LLaVA's tokenizer has it: <unk>, <s>, </s>, no pad and no <image>. Returns its size."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True)
    fast.save_pretrained(folder)
    return len(fast)


def _source_model(folder: Path, n_known: int):
    """M: the tiny llava-hf model over the original tokenizer + <image> + <pad> (new rows set to the mean)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    add_llava_tokens(tokenizer)
    model = build_tiny_model(tokenizer, TINY).eval()
    with torch.no_grad():
        for weight in (model.model.language_model.embed_tokens.weight, model.lm_head.weight):
            weight[n_known:] = weight[:n_known].mean(dim=0)
    return model, build_processor(tokenizer, TINY)


def _original_name(name: str) -> str | None:
    renames = [("model.language_model.", "model."), ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
               ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
               ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."), ("lm_head.", "lm_head.")]
    for new, old in renames:
        if name.startswith(new):
            return old + name.removeprefix(new)
    return None


def _original_tensors(model, n_known: int, with_tower: bool) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, value in model.state_dict().items():
        original = _original_name(name)
        if original is None or (not with_tower and ".vision_tower." in original):
            continue
        if original in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:n_known]
        tensors[original] = value.clone().contiguous()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old HF Llama saves had these
    return tensors


def _original_config(model, n_known: int, tower: str) -> dict:
    text = model.config.text_config.to_dict()
    for key in ("rope_parameters", "dtype", "model_type", "transformers_version", "pad_token_id"):
        text.pop(key, None)
    return {**text, "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "vocab_size": n_known,
            "rope_theta": 10000.0, "rope_scaling": None, "torch_dtype": "float32", "mm_vision_tower": tower,
            "mm_hidden_size": TINY.vision_hidden_size, "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
            "mm_patch_merge_type": "flat", "mm_use_im_start_end": False, "mm_use_im_patch_token": False}


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], as_bin_shards: bool) -> None:
    if not as_bin_shards:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        torch.save({k: tensors[k] for k in keys}, folder / shard)
        weight_map.update({k: shard for k in keys})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _clip_folder(folder: Path, model, with_weights: bool) -> Path:
    """A local CLIP folder like openai/clip-vit-large-patch14-336: CLIPModel config (+ text tower) and weights."""
    folder.mkdir(parents=True)
    vision = model.config.vision_config.to_dict()
    text = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    CLIPConfig(text_config=text, vision_config=vision).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": TINY.image_size, "size": TINY.image_size, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
        "resample": 3, "image_processor_type": "CLIPImageProcessor"}))
    if with_weights:
        tower = {"vision_model." + k.removeprefix("model.vision_tower."): v.clone()
                 for k, v in model.state_dict().items() if k.startswith("model.vision_tower.")}
        tower.update({"text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
                      "logit_scale": torch.tensor(2.6), "visual_projection.weight": torch.randn(16, 16)})
        save_file(tower, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image.Image:
    root = tmp_path_factory.mktemp("convert_images")
    write_dataset(root, n=2)
    return Image.open(root / "images" / "s1.png").convert("RGB")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(M, M's processor, V, src folder without tower weights, CLIP folder, src folder with the tower in .bin shards)."""
    root = tmp_path_factory.mktemp("convert_src")
    plain, with_tower = root / "llava-v1.5-tiny", root / "asmv2-tiny"
    plain.mkdir()
    n_known = _original_tokenizer(plain)
    model, processor = _source_model(plain, n_known)
    clip = _clip_folder(root / "clip-vit-tiny", model, with_weights=True)
    _write_weights(plain, _original_tensors(model, n_known, with_tower=False), as_bin_shards=False)
    (plain / "config.json").write_text(json.dumps(_original_config(model, n_known, HUB_TOWER)))

    config_only = _clip_folder(root / "clip-config-only", model, with_weights=False)
    with_tower.mkdir()
    _original_tokenizer(with_tower)
    _write_weights(with_tower, _original_tensors(model, n_known, with_tower=True), as_bin_shards=True)
    (with_tower / "config.json").write_text(json.dumps(_original_config(model, n_known, str(config_only))))
    return model, processor, n_known, plain, clip, with_tower


def _compare_with_source(out: Path, model, processor, n_known: int, image: Image.Image) -> None:
    converted, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    conv_processor = AutoProcessor.from_pretrained(out)
    tok = conv_processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == n_known and tok.pad_token == "<pad>" and len(tok) == n_known + 2
    assert converted.config.image_token_id == n_known and converted.config.text_config.vocab_size == n_known + 2
    assert converted.config.vision_feature_layer == -2 and converted.config.vision_feature_select_strategy == "default"
    text = render_prompt(conv_processor, PROMPT)
    assert text.endswith(f"USER: <image>\n{PROMPT} ASSISTANT:") and text == render_prompt(processor, PROMPT)
    inputs = dict(conv_processor(images=image, text=text, return_tensors="pt"))
    reference = dict(processor(images=image, text=text, return_tensors="pt"))
    assert torch.equal(inputs["input_ids"], reference["input_ids"])
    assert torch.equal(inputs["pixel_values"], reference["pixel_values"])  # same "pad" CLIP preprocessing
    with torch.no_grad():
        got, want = converted(**inputs).logits, model(**inputs).logits
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5
    greedy = {"max_new_tokens": 12, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    assert torch.equal(converted.generate(**inputs, **greedy), model.generate(**inputs, **greedy))


def test_checkpoint_without_tower_converts_with_vision_tower_folder(source, image, tmp_path, capsys):
    model, processor, n_known, plain, clip, _ = source
    out = tmp_path / "llava-hf"
    code = cli_main(["convert-llava", "--src", str(plain), "--out", str(out), "--vision-tower", str(clip)])
    assert code == 0
    assert f"'<image>': {n_known}, '<pad>': {n_known + 1}" in capsys.readouterr().out
    _compare_with_source(out, model, processor, n_known, image)
    record = json.loads((out / CONVERT_RECORD).read_text())
    assert record["vision_tower_weights_from"] == str(clip) and record["dtype"] == "float32"
    assert record["dropped_buffers"] == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    golden = [line for line in GOLDEN_KEYS.read_text().splitlines() if line and not line.startswith("#")]
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert sorted(handle.keys()) == golden
    converted = AutoModelForImageTextToText.from_pretrained(out)
    mean = model.lm_head.weight[:n_known].mean(dim=0)
    assert torch.allclose(converted.lm_head.weight[n_known:], mean.expand(2, -1))


def test_tower_inside_sharded_bin_checkpoint_and_dtype(source, image, tmp_path):
    model, processor, n_known, _, clip, with_tower = source
    result = convert_llava(with_tower, tmp_path / "fp32", echo=lambda _: None)
    assert result.record["vision_tower_weights_from"] == "checkpoint"
    _compare_with_source(result.out, model, processor, n_known, image)

    printed: list[str] = []
    bf16 = convert_llava(with_tower, tmp_path / "bf16", vision_tower=clip, dtype="bf16", echo=printed.append)
    assert any("stored in" in line and "supplies only its config" in line for line in printed)
    loaded = AutoModelForImageTextToText.from_pretrained(bf16.out, dtype="auto")
    assert loaded.dtype == torch.bfloat16 and json.loads((bf16.out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_bad_inputs_fail_clearly_and_write_nothing(source, tmp_path, capsys):
    _, _, _, plain, clip, with_tower = source
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=f"neither in .* nor given.*{HUB_TOWER}.*--vision-tower"):
        convert_llava(plain, out, echo=lambda _: None)
    with pytest.raises(ConvertError, match="--vision-tower .* does not exist"):
        convert_llava(plain, out, vision_tower=tmp_path / "nope", echo=lambda _: None)
    linear = _edit_config(plain, tmp_path / "linear", mm_projector_type="linear", image_aspect_ratio="anyres")
    with pytest.raises(ConvertError, match="(?s)only 'mlp2x_gelu'.*anyres unsupported"):
        convert_llava(linear, out, vision_tower=clip, echo=lambda _: None)
    hub = _edit_config(with_tower, tmp_path / "hub", mm_vision_tower=HUB_TOWER)  # published 1024-wide config
    with pytest.raises(ConvertError, match="mm_hidden_size 16 differs from the vision tower's hidden size 1024"):
        convert_llava(hub, out, echo=lambda _: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="has no config.json"):
        convert_llava(tmp_path / "empty", out, echo=lambda _: None)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputDirError, match="already holds files"):
        convert_llava(plain, out, vision_tower=clip, echo=lambda _: None)
    assert cli_main(["convert-llava", "--src", str(plain), "--out", str(tmp_path / "o2")]) == 2
    assert "--vision-tower" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
