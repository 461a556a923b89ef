"""Text-only pretraining of the tiny base's language model on the caption rows (pretrain-tiny --lm-seconds)."""

from __future__ import annotations

import torch
from conftest import tiny_overrides, write_dataset

from pancapchain.config import load_recipe
from pancapchain.constants import IGNORE_INDEX
from pancapchain.model.language_pretrain import answer_loss, pad_rows, pretrain_language


def _tiny(tmp_path):
    from pancapchain.model.build import load_base
    from pancapchain.model.pretrain_tiny import tokenizer_texts

    train = write_dataset(tmp_path / "data", n=4, width=32, height=32)
    cfg = load_recipe("recipes/tiny_chain.yaml", tiny_overrides(train, tmp_path / "run", **{"lora.enabled": "false"}))
    texts, _kept, captions = tokenizer_texts(cfg)
    model, processor = load_base(cfg, texts)
    return cfg, model, processor, captions


def test_text_rows_are_the_training_rows_without_the_image(tmp_path):
    from pancapchain.model.chat import stage_token_ids, text_token_ids

    _cfg, _model, processor, captions = _tiny(tmp_path)
    ex = captions[0]
    (with_image, answer), = stage_token_ids(processor, [ex.prompt], [ex.target], [(ex.height, ex.width)], "")
    (text_only, text_answer), = text_token_ids(processor, [ex.prompt], [ex.target], "")
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert text_answer == answer and answer[-1] == processor.tokenizer.eos_token_id
    assert image_id in with_image and image_id not in text_only
    # the same turn with the image placeholder (the image tokens and the line break after them) dropped
    tok = processor.tokenizer
    shown = tok.decode([t for t in with_image if t != image_id])
    assert tok.decode(text_only) == shown.replace("USER: \n", "USER: ", 1) != shown


def test_language_pretraining_refuses_an_empty_run():
    import pytest

    with pytest.raises(ValueError, match="at least one text row"):
        pretrain_language(None, [], 0, seconds=1.0)
    with pytest.raises(ValueError, match="seconds > 0 or max_steps > 0"):
        pretrain_language(None, [([1], [2])], 0, seconds=0)


def test_pad_rows_supervises_only_the_answers():
    ids, mask, labels = pad_rows([([5, 6, 7], [8, 9]), ([1], [2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    x = IGNORE_INDEX
    assert labels.tolist() == [[x, x, x, 8, 9], [x, 2, x, x, x]]


def test_answer_loss_is_the_cross_entropy_of_the_answer_tokens(tmp_path):
    _cfg, model, _processor, _captions = _tiny(tmp_path)
    ids, mask, labels = pad_rows([([3, 4, 5], [6, 7]), ([3, 9], [10, 11, 12])], pad_id=0)
    loss, acc = answer_loss(model, ids, mask, labels)
    with torch.no_grad():
        logits = model.lm_head(model.model.language_model(input_ids=ids, attention_mask=mask).last_hidden_state)
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    reference = torch.nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss.detach(), reference)
    assert 0.0 <= acc <= 1.0


def test_language_pretraining_learns_its_rows_and_leaves_the_tower(tmp_path, one_thread):
    _cfg, model, processor, captions = _tiny(tmp_path)
    from pancapchain.model.chat import text_token_ids

    rows = text_token_ids(processor, [e.prompt for e in captions], [e.target for e in captions], "")
    batch = pad_rows(rows, processor.tokenizer.pad_token_id or 0)
    tower = {n: p.clone() for n, p in model.model.vision_tower.named_parameters()}
    with torch.no_grad():
        before = answer_loss(model, *batch)[0].item()
    report = pretrain_language(model, rows, processor.tokenizer.pad_token_id or 0, seconds=0, max_steps=30,
                               batch_size=4)
    with torch.no_grad():
        after = answer_loss(model, *batch)[0].item()
    assert report["lm_steps"] == 30 and report["lm_rows"] == len(rows)
    assert after < 0.7 * before  # 30 steps on 4 rows: the answers are being learned
    assert all(torch.equal(p, tower[n]) for n, p in model.model.vision_tower.named_parameters())
