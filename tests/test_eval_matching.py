"""Official entity matching: costs, Hungarian assignment, tag/location F1 (hand-computed values)."""

from __future__ import annotations

import numpy as np
import pytest

from pancapchain.eval.embed import l2_normalize
from pancapchain.eval.matching import (
    MatchConfig,
    TaggedEntity,
    match_cost_matrix,
    match_entities,
    synonym_score,
)


class TableEmbedder:
    """Fixed vectors per text, so every cosine in a test is known exactly; counts encoded texts."""

    name = "table"

    def __init__(self, table: dict[str, list[float]]):
        self.table = {k: l2_normalize(np.array([v], dtype=np.float32))[0] for k, v in table.items()}
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded.extend(texts)
        return np.stack([self.table[t] for t in texts])


VECTORS = {
    "dog": [1, 0, 0, 0, 0],
    "puppy": [0.8, 0.6, 0, 0, 0],  # cos(dog, puppy) = 0.8
    "red car": [0, 0, 1, 0, 0],
    "car": [0, 0, 0.6, 0.8, 0],
    "tree": [0, 0, 0, 1, 0],  # cos(tree, car) = 0.8
    "sky": [0, 0, 0, 0, 1],
}
GT = [
    TaggedEntity("dog", (0.0, 0.0, 0.5, 0.5)),
    TaggedEntity("red car", (0.5, 0.5, 1.0, 1.0)),
    TaggedEntity("tree", (0.0, 0.5, 0.5, 1.0)),
]
PRED = [
    TaggedEntity("dog", (0.0, 0.0, 0.5, 0.5)),  # exact tag, IoU 1
    TaggedEntity("car", (0.5, 0.5, 1.0, 0.9)),  # containment in "red car", IoU 0.2 / 0.25 = 0.8
    TaggedEntity("puppy", (0.6, 0.0, 1.0, 0.4)),  # cos 0.8 with dog, no overlap
    TaggedEntity("sky", None),  # no box, matches nothing
]


def test_synonym_score_is_raw_containment_without_wordnet():
    assert synonym_score("car", "red car", use_wordnet=False) == 1.0
    assert synonym_score("red car", "car", use_wordnet=False) == 1.0
    assert synonym_score("ant", "elephant", use_wordnet=False) == 1.0  # substring, as the official code
    assert synonym_score("Car", "red car", use_wordnet=False) == 0.0  # case-sensitive
    assert synonym_score("dog", "puppy", use_wordnet=False) == 0.0


def test_cost_matrix_hand_computed():
    emb = TableEmbedder(VECTORS)
    cost, loc_ok = match_cost_matrix(GT, PRED, emb, MatchConfig(use_wordnet=False))
    big = 1e6
    expected = np.array([
        [-1001.0, big, -8.0, big],
        [big, -100.8, big, big],
        [big, -8.0, big, big],
    ])
    np.testing.assert_allclose(cost, expected, rtol=0, atol=1e-5)
    assert loc_ok.tolist() == [
        [True, False, False, False],
        [False, True, False, False],
        [False, False, False, False],
    ]
    # exact and containment pairs never ask the embedder; only the open pairs are encoded
    assert "red car" in emb.encoded and "car" in emb.encoded


def test_assignment_and_f1s_hand_computed():
    match = match_entities(GT, PRED, TableEmbedder(VECTORS), MatchConfig(use_wordnet=False))
    # Hungarian: dog-dog (-1001) + red car-car (-100.8) + tree-puppy (1e6) beats any use of tree-car (-8)
    assert match.pairs == [(0, 0), (1, 1)]
    assert match.loc_ok == {(0, 0), (1, 1)}
    assert match.mapping == {0: 0, 1: 1}
    assert match.tag.precision == pytest.approx(2 / 4)
    assert match.tag.recall == pytest.approx(2 / 3)
    assert match.tag.f1 == pytest.approx(4 / 7)  # 2PR/(P+R) = (2/3)/(7/6)
    assert match.loc.precision == pytest.approx(2 / 3)  # 3 predicted boxes
    assert match.loc.recall == pytest.approx(2 / 3)
    assert match.loc.f1 == pytest.approx(2 / 3)


def test_iou_bonus_chooses_between_equal_tags():
    a, b = (0.0, 0.0, 0.4, 0.4), (0.6, 0.6, 1.0, 1.0)
    gt = [TaggedEntity("dog", a), TaggedEntity("dog", b)]
    pred = [TaggedEntity("dog", b), TaggedEntity("dog", a)]
    match = match_entities(gt, pred, None)
    assert sorted(match.pairs) == [(0, 1), (1, 0)]
    assert match.loc.f1 == 1.0 and match.tag.f1 == 1.0


def test_location_needs_semantic_match_and_threshold():
    box = (0.1, 0.1, 0.5, 0.5)
    half_shift = (0.3, 0.1, 0.7, 0.5)  # IoU = 0.2*0.4 / (2*0.16 - 0.08) = 1/3
    match = match_entities([TaggedEntity("cat", box)], [TaggedEntity("cat", half_shift)], None)
    assert match.tag.f1 == 1.0 and match.loc.f1 == 0.0
    # same box, unrelated tag (no embedder -> cosine 0): neither tag nor location counts
    match = match_entities([TaggedEntity("cat", box)], [TaggedEntity("boat", box)], None)
    assert match.pairs == [] and match.loc.f1 == 0.0
    # a looser IoU threshold accepts the shifted box
    match = match_entities([TaggedEntity("cat", box)], [TaggedEntity("cat", half_shift)], None,
                           MatchConfig(iou_threshold=0.3))
    assert match.loc.f1 == 1.0


def test_embed_threshold_is_configurable():
    emb = TableEmbedder(VECTORS)
    strict = match_entities([TaggedEntity("dog")], [TaggedEntity("puppy")], emb, MatchConfig(embed_threshold=0.9))
    loose = match_entities([TaggedEntity("dog")], [TaggedEntity("puppy")], emb, MatchConfig(embed_threshold=0.5))
    assert strict.pairs == [] and loose.pairs == [(0, 0)]
    assert loose.cost[0, 0] == pytest.approx(-8.0)


def test_zero_entity_gt_never_divides_by_zero():
    empty_vs_empty = match_entities([], [], None)
    assert empty_vs_empty.tag.f1 == 1.0 and empty_vs_empty.loc.f1 == 1.0
    empty_vs_some = match_entities([], [TaggedEntity("dog", (0, 0, 1, 1))], None)
    assert empty_vs_some.tag.f1 == 0.0 and empty_vs_some.loc.f1 == 0.0
    some_vs_empty = match_entities([TaggedEntity("dog", (0, 0, 1, 1))], [], None)
    assert some_vs_empty.tag.f1 == 0.0 and some_vs_empty.tag.recall == 0.0


def test_entities_without_boxes_only_affect_tags():
    match = match_entities([TaggedEntity("dog")], [TaggedEntity("dog", (0, 0, 1, 1))], None)
    assert match.tag.f1 == 1.0
    assert match.n_gt_boxes == 0 and match.loc.f1 == 0.0  # official: no GT box -> location recall 0
