"""Caption metrics with hand-computed values (BLEU-4, CIDEr-D, ROUGE-L); METEOR 1.5 when Java is present."""

from __future__ import annotations

import math

import pytest

from pancapchain.eval.caption_metrics import (
    bleu,
    caption_metrics,
    cider_d,
    lcs_length,
    meteor,
    meteor_status,
    rouge_l,
    tokenize,
)


def test_tokenize_lowercases_and_drops_ptb_punctuation():
    # coco-caption keeps the PTB bracket tokens (lower-cased, so its upper-case filter list misses them)
    assert tokenize("The Cat, sat (on) the mat.") == ["the", "cat", "sat", "-lrb-", "on", "-rrb-", "the", "mat"]


def test_bleu_hand_value():
    refs = {"a": ["the cat sat on the mat"]}
    # clipped precisions 5/6, 3/5, 2/4, 1/3; equal lengths -> no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(refs, {"a": "the cat sat on a mat"}) == pytest.approx(expected, rel=1e-6)
    assert bleu(refs, {"a": "The cat sat on the mat."}) == pytest.approx(1.0)
    # brevity penalty: 4 of 6 words, every n-gram matches -> exp(1 - 6/4)
    assert bleu({"a": ["a b c d e f"]}, {"a": "a b c d"}) == pytest.approx(math.exp(1 - 6 / 4), rel=1e-6)


def test_rouge_l_hand_value():
    assert lcs_length("the cat sat on a mat".split(), "the cat sat on the mat".split()) == 5
    # P = 3/3, R = 3/6, beta = 1.2: (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert rouge_l({"a": ["the cat sat on the mat"]}, {"a": "the cat sat"}) == pytest.approx(1.22 / 1.94)
    assert rouge_l({"a": ["x y"]}, {"a": "z"}) == 0.0


def test_cider_d_hand_values():
    refs = {"A": ["a b"], "B": ["c d"]}
    # every n-gram has df 1 of 2 images: idf log 2; n = 1, 2 give cosine 1, n = 3, 4 are empty -> 10 * 2/4
    assert cider_d(refs, {"A": "a b", "B": "c d"}) == pytest.approx(5.0)
    # "a a b": clipped unigram cosine 2/sqrt(10), bigram 1/sqrt(2), length penalty exp(-1/72)
    score_a = 10 * math.exp(-1 / 72) * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
    assert cider_d(refs, {"A": "a a b", "B": "c d"}) == pytest.approx((score_a + 5.0) / 2, rel=1e-6)


def test_missing_reference_is_an_error():
    with pytest.raises(ValueError, match="without references"):
        bleu({}, {"a": "text"})


def test_caption_metrics_notes_when_meteor_disabled():
    scores, notes = caption_metrics({"a": ["a dog runs"]}, {"a": "a dog runs"}, use_meteor=False)
    assert set(scores) == {"BLEU-4", "CIDEr-D", "ROUGE-L"}
    assert any("METEOR skipped" in n for n in notes)


def test_meteor_status_reports_a_missing_jar(tmp_path):
    available, note = meteor_status(tmp_path / "missing.jar")
    assert not available and "METEOR skipped" in note


@pytest.mark.skipif(not meteor_status()[0], reason="METEOR needs java and meteor-1.5.jar (pycocoevalcap)")
@pytest.mark.timeout(120)
def test_meteor_matches_the_reference_jar_wrapper():
    refs = {"a": ["a dog runs in the park"], "b": ["two cats sleep"]}
    hyps = {"a": "a dog is running in a park", "b": "a cat sleeps"}
    # 0.234520... is what pycocoevalcap's own Meteor wrapper returns for these strings
    assert meteor(refs, hyps) == pytest.approx(0.2345202, abs=1e-6)
