"""The judge path end to end with a tiny random HF causal LM built here (plumbing: loading from a local
folder, chat template, left-padded greedy batches, cache resume; its malformed lines are counted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pancapchain.eval.judge import HFJudge, JudgeRequest
from pancapchain.eval.judge_prompts import JudgePrompts
from pancapchain.eval.runner import EvalOptions, evaluate

SENTENCES = [
    "1 | entity -->> ( whole , dog )",
    "2 | location -->> ( entity 1 , [ 0.1 , 0.2 , 0.3 , 0.4 ] )",
    '3 | attribute -->> ( entity 1 , " entity 1 is brown " )',
    "a brown dog sits on green grass and the scene feels calm",
    "Yes No question answer paragraph image facts line",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random Llama with a word-level tokenizer, saved to a local folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-judge")
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
                                  eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.timeout(120)
def test_batched_greedy_equals_one_by_one(tiny_lm):
    judge = HFJudge(tiny_lm, system_prompt="be exact", batch_size=3, max_new_tokens=6)
    requests = [JudgeRequest("a", "gt_content", "a dog"),
                JudgeRequest("b", "gt_content", "a brown dog sits on green grass and the scene feels calm"),
                JudgeRequest("c", "gt_content", "grass")]
    batched = judge.generate(requests)
    singles = [judge.generate([r])[0] for r in requests]
    assert batched == singles
    assert all(isinstance(t, str) for t in batched)
    assert judge.chat_text("hi") == "system: be exact\nuser: hi\nassistant:"


def test_missing_model_folder_is_a_clear_error(tmp_path):
    judge = HFJudge(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="local folder"):
        judge.generate([JudgeRequest("a", "gt_content", "x")])


@pytest.mark.timeout(180)
def test_end_to_end_with_tiny_random_lm(tiny_lm, tmp_path):
    gts, preds = [], []
    for i in range(2):
        caption = f"A brown dog [[0.1, 0.1, 0.{i + 4}, 0.5]] sits on green grass [[0.0, 0.5, 1.0, 1.0]]."
        gts.append({"id": f"im{i}", "image": f"im{i}.png", "width": 640, "height": 480, "caption": caption,
                    "entities": [{"id": 0, "tag": "brown dog", "box": [0.1, 0.1, 0.4 + i / 10, 0.5]}]})
        preds.append({"id": f"im{i}", "caption": "A dog <box>[[100, 225, 500, 600]]</box> on grass."})
    (tmp_path / "gt.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gts))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    options = EvalOptions(judge=f"hf:{tiny_lm}", embed_model="hashing", judge_batch_size=2,
                          judge_max_new_tokens=12, caption_metrics=False)
    first = evaluate(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl", options, out_dir=tmp_path / "out")
    assert first.metrics["n_images"] == 2
    assert first.metrics["judge_calls"]["calls"] == first.metrics["judge_calls"]["requests"] >= 4
    dropped = sum(r.counts["judge_lines_dropped"] for r in first.images)
    assert dropped > 0  # random text is not protocol lines: counted, never fatal
    assert all(r.status == "ok" for r in first.images)
    assert first.metrics["pancapscore"] == pytest.approx(100.0 * sum(
        r.scores[d].f1 * w for r in first.images for d, w in
        (("tag", 1), ("loc", 1), ("attr", 1), ("rel", 1), ("global", 0.1))) / 2)
    assert len(list((tmp_path / "out" / "judge_cache").glob("*.json"))) == 2
    second = evaluate(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl", options, out_dir=tmp_path / "out")
    assert second.metrics["judge_calls"]["calls"] == 0  # resumed entirely from the cache
    assert [r.to_dict() for r in second.images] == [r.to_dict() for r in first.images]
    assert first.metrics["judge_calls"]["prompts_fingerprint"] == JudgePrompts.load().fingerprint()
    assert first.metrics["judge_calls"]["judge"] == f"hf:{tiny_lm.resolve()}"


@pytest.mark.timeout(180)
def test_judge_shards_fill_the_cache_that_one_scoring_pass_reads(tiny_lm, tmp_path):
    """A data-parallel eval: each rank judges its block of images into the shared cache, rank 0 then scores
    with zero new calls and gets what one process gets."""
    from pancapchain.eval.runner import judge_shard

    gts, preds = [], []
    for i in range(3):
        caption = f"A brown dog [[0.1, 0.1, 0.{i + 4}, 0.5]] sits on grass [[0.0, 0.5, 1.0, 1.0]]."
        gts.append({"id": f"im{i}", "image": f"im{i}.png", "width": 64, "height": 48, "caption": caption,
                    "entities": [{"id": 0, "tag": "brown dog", "box": [0.1, 0.1, 0.4 + i / 10, 0.5]}]})
        preds.append({"id": f"im{i}", "caption": f"A dog [[0.1, 0.1, 0.{i + 5}, 0.5]] on grass."})
    (tmp_path / "gt.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gts))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    options = EvalOptions(judge=f"hf:{tiny_lm}", embed_model="hashing", judge_batch_size=2,
                          judge_max_new_tokens=8, caption_metrics=False)
    args = (tmp_path / "pred.jsonl", tmp_path / "gt.jsonl", options)
    one = evaluate(*args, out_dir=tmp_path / "one")
    shards = [judge_shard(*args, tmp_path / "two", lambda pairs, r=r: pairs[2 * r : 2 * r + 2]) for r in (0, 1)]
    assert one.metrics["image_status"] == {"ok": 3}
    assert sum(s["calls"] for s in shards) == one.metrics["judge_calls"]["calls"] > 0
    assert len(list((tmp_path / "two" / "judge_cache").glob("*.json"))) == 3
    two = evaluate(*args, out_dir=tmp_path / "two")
    assert two.metrics["judge_calls"]["calls"] == 0
    assert [r.to_dict() for r in two.images] == [r.to_dict() for r in one.images]
