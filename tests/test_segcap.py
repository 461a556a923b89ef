"""segcap/region rows in training (collator ids, per-task logs) and box-prompted inference on a tiny mask model."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_overrides
from PIL import Image

from pancapchain.cli import main as cli_main
from pancapchain.config import TinyModelConfig, load_recipe
from pancapchain.constants import TASKS
from pancapchain.data.boxes import find_box_groups
from pancapchain.data.prompts import PromptError, PromptSet
from pancapchain.data.synth import write_dataset
from pancapchain.infer.chain import PancapChain
from pancapchain.infer.generation import Decoded
from pancapchain.infer.segcap import is_duplicate, jaccard, parse_box_arg, region, segcap, token_set
from pancapchain.mask.rle import decode_rle
from pancapchain.model.tiny import build_processor, build_tokenizer
from pancapchain.train.collator import PancapCollator
from pancapchain.train.run import run_training

MASK = {"mask.enabled": "true", "mask.dim": "16", "mask.upsample": "1"}
TASK_WEIGHTS = "{localize: 0, label: 1.0, discover: 0, caption: 0, segcap: 0.5, region: 0.5}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny mask model trained 2 steps on label + segcap + region rows of synthetic scenes."""
    root = tmp_path_factory.mktemp("segcap")
    write_dataset(root / "data", 6, 2, seed=3, size=32, progress=False)
    out = root / "run"
    overrides = tiny_overrides(root / "data" / "train.jsonl", out, **MASK,
                               **{"train.max_steps": "2", "data.stages": TASK_WEIGHTS})
    metrics = run_training(load_recipe(None, overrides))
    sample = json.loads((root / "data" / "val.jsonl").read_text().splitlines()[0])
    return {"out": out, "metrics": metrics, "sample": sample, "image": root / "data" / sample["image"]}


@pytest.fixture(scope="module")
def chain(trained):
    return PancapChain.from_pretrained(str(trained["out"]))


def test_collator_indexes_tasks_and_weights_segcap_rows(tmp_path):
    texts = ["system", "Please describe the entity at", "a red circle <box>[[100, 200, 300, 400]]</box>"]
    proc = build_processor(build_tokenizer(texts * 10, vocab_size=350), TinyModelConfig(image_size=32, patch_size=8))
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "a.png")
    rows = [{"sample_id": "a", "stage": stage, "image": str(tmp_path / "a.png"), "width": 32, "height": 32,
             "prompt": "Please describe the entity at <box>[[100, 200, 300, 400]]</box>",
             "target": "a red circle <box>[[100, 200, 300, 400]]</box>", "length": 0} for stage in ("segcap", "label")]
    batch = PancapCollator(proc, "system", {"label": 1.0, "segcap": 0.5})(rows)
    assert batch["stage_ids"].tolist() == [4, 1] == [TASKS.index("segcap"), TASKS.index("label")]
    assert batch["loss_weights"].tolist() == [0.5, 1.0]
    assert batch["sample_ids"] == ["a/segcap", "a/label"]


def test_training_logs_per_task_losses_for_segcap_and_region(trained):
    log = json.loads((trained["out"] / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in log if "loss" in entry]
    assert steps and all(k not in e for e in steps for k in ("loss_localize", "loss_caption"))  # weight 0
    logged = {k for e in steps for k in e}
    assert {"loss_label", "loss_segcap", "loss_region", "mask_bce", "mask_dice"} <= logged
    assert all(e[k] > 0 for e in steps for k in ("loss_segcap", "loss_region") if k in e)
    report = json.loads((trained["out"] / "data_report.json").read_text())
    assert not [s for r in report["reports"] for s in r["skipped"] if s["record"].endswith(("/segcap", "/region"))]


def _assert_pairs(pairs, k, image):
    assert len(pairs) == k
    texts = [p["caption_model"] for p in pairs]
    assert all(t.strip() for t in texts)
    for i, text in enumerate(texts):
        assert not is_duplicate(text, texts[:i] + texts[i + 1 :])
    for pair in pairs:
        groups = find_box_groups(pair["caption_model"])
        assert [m["group"] for m in pair["masks"]] == list(range(len(groups)))  # one mask per box group
        for entry in pair["masks"]:
            assert decode_rle(entry["rle"], "t").shape == (image.height, image.width)


def test_segcap_returns_k_distinct_pairs_with_masks(trained, chain):
    image = Image.open(trained["image"]).convert("RGB")
    box = trained["sample"]["entities"][-1]["box"]
    pairs = segcap(chain, image, box, 5, temperature=1.5, max_new_tokens=40, seed=7)
    _assert_pairs(pairs, 5, image)
    again = segcap(chain, image, box, 5, temperature=1.5, max_new_tokens=40, seed=7)
    assert [p["caption_model"] for p in again] == [p["caption_model"] for p in pairs]  # seeded
    other = segcap(chain, image, box, 5, temperature=1.5, max_new_tokens=40, seed=8)
    assert [p["caption_model"] for p in other] != [p["caption_model"] for p in pairs]


def test_segcap_drops_exact_and_near_duplicates_and_refills(trained, chain, monkeypatch):
    base = "The sky <box>[[0, 0, 1000, 300]]</box> is gray and the red circle <box>[[100, 200, 300, 400]]</box> sits"
    rounds = [
        ["A red circle <box>[[100, 200, 300, 400]]</box> is here.", "A red circle <box>[[100, 200, 300, 400]]</box> "
         "is here.", "a red  circle <box>[[100, 200, 300, 400]]</box> is HERE.", "  ", base + " below."],
        [base + " below it.", "A blue square.", "Nothing <box>[[1, 2, 3, 4]]</box> else", "Two shapes.", "Extra."],
    ]
    calls = []

    def scripted(prompts, sizes, features, system, kwargs, *, seed):
        calls.append((seed, len(prompts), len(features.pooler_output), kwargs))
        return [Decoded(t, False) for t in rounds[len(calls) - 1]]

    monkeypatch.setattr(chain.generator, "generate", scripted)
    image = Image.open(trained["image"]).convert("RGB")
    pairs = segcap(chain, image, [0.1, 0.2, 0.3, 0.4], 5, temperature=1.3, top_p=0.8, seed=4, max_new_tokens=9)
    assert [p["caption_model"] for p in pairs] == [rounds[0][0], rounds[0][4], *rounds[1][1:4]]
    assert [c[:3] for c in calls] == [(4, 5, 5), (5, 5, 5)]  # K prompts per round, seed + round
    assert calls[0][3] == {"max_new_tokens": 9, "do_sample": True, "temperature": 1.3, "top_p": 0.8}
    assert [len(p["masks"]) for p in pairs] == [1, 2, 0, 1, 0]
    _assert_pairs(pairs, 5, image)
    # 32x24 image on a 32-px padded square (4 px above): y = (grid / 1000 * 32 - 4) / 24
    assert image.size == (32, 24)
    assert pairs[0]["caption"] == "A red circle [[0.100, 0.100, 0.300, 0.367]] is here."
    assert pairs[0]["entities"] == [{"tag": "red circle", "box": [0.1, 0.1, 0.3, 0.367],  # read from the caption
                                     "box_model": "<box>[[100, 200, 300, 400]]</box>"}]
    assert pairs[1]["masks"][1]["boxes"] == [[0.1, 0.1, 0.3, 0.3667]]


def test_segcap_gives_fewer_after_the_round_budget(trained, chain, monkeypatch):
    monkeypatch.setattr(chain.generator, "generate", lambda p, *a, seed: [Decoded("same text", False)] * len(p))
    pairs = segcap(chain, Image.open(trained["image"]), [0.1, 0.2, 0.3, 0.4], 3, max_rounds=2)
    assert [p["caption_model"] for p in pairs] == ["same text"]


def test_region_caption_and_mask(trained, chain):
    image = Image.open(trained["image"]).convert("RGB")
    result = region(chain, image, [0.25, 0.25, 0.75, 0.75], max_new_tokens=6)
    assert isinstance(result["caption"], str)
    assert result["box_model"] == chain.codec.encode([(0.25, 0.25, 0.75, 0.75)], image.width, image.height)
    mask = decode_rle(result["mask"]["rle"], "region")
    assert mask.shape == (image.height, image.width) and 0.0 <= result["mask"]["score"] <= 1.0


def test_missing_task_prompt_is_a_clear_error(trained, chain, monkeypatch):
    bare = PromptSet(chain.prompts.version, chain.prompts.system, "", {k: v for k, v in chain.prompts.stages.items()
                                                                       if k not in ("segcap", "region")})
    monkeypatch.setattr(chain, "prompts", bare)
    image = Image.open(trained["image"])
    with pytest.raises(PromptError, match="no template for \\['segcap'\\]"):
        segcap(chain, image, [0.1, 0.2, 0.3, 0.4], 2)
    with pytest.raises(PromptError, match="no template for \\['region'\\]"):
        region(chain, image, [0.1, 0.2, 0.3, 0.4])


def test_cli_commands_write_json(trained, tmp_path, capsys):
    model, image = str(trained["out"]), str(trained["image"])
    out = tmp_path / "pairs.json"
    assert cli_main(["segcap", "--model", model, "--image", image, "--box", "0.1,0.2,0.5,0.9", "-k", "3",
                     "--temperature", "1.5", "--max-new-tokens", "16", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert len(written["pairs"]) == 3 and written["box"] == [0.1, 0.2, 0.5, 0.9] and written["settings"]["k"] == 3
    assert cli_main(["region", "--model", model, "--image", image, "--box", "0.1,0.2,0.5,0.9",
                     "--max-new-tokens", "4", "--out", str(tmp_path / "r.json")]) == 0
    assert set(json.loads((tmp_path / "r.json").read_text())) >= {"caption", "mask", "box_model", "settings"}
    assert cli_main(["segcap", "--model", model, "--image", image, "--box", "0.5,0.2,0.1,0.9"]) == 2
    assert "x2 < x1" in capsys.readouterr().err  # user errors are one line on stderr (pancapchain.errors)


def test_duplicate_rules_and_box_argument():
    assert jaccard(token_set("a b c"), token_set("A, b; c!")) == 1.0
    assert is_duplicate("The  Cat sat.", ["the cat sat."])
    many = " ".join(f"w{i}" for i in range(20))
    assert is_duplicate(many + " extra", [many])  # 20/21 >= 0.9
    assert not is_duplicate(many + " x y z", [many], near_duplicate=0.9)  # 20/23 < 0.9
    assert parse_box_arg("0.1, 0.2,0.5,0.9") == (0.1, 0.2, 0.5, 0.9)
    with pytest.raises(ValueError, match="outside"):
        parse_box_arg("0.1,0.2,1.5,0.9")
    with pytest.raises(ValueError, match="4 numbers"):
        parse_box_arg("0.1,0.2")
