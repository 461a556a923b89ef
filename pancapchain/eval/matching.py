"""Entity matching exactly as the official PancapScore code (eval_entity), constants configurable.

For every (GT entity g, predicted entity p) pair a cost is set by the first rule that applies:

    tag_g == tag_p                         -> exact_cost                 (-1000)
    synonymy(tag_g, tag_p) = s > 0         -> -synonym_weight * s        (-100 * s)
    cos(embed(tag_g), embed(tag_p)) >= 0.5 -> -embed_weight * cos        (-10 * cos)
    otherwise                              -> unmatched_cost             (1e6)

and when the cost is negative and both have a box with IoU >= 0.5 (computed in float32, as torchvision's
box_iou), the IoU is subtracted and the pair is flagged "location ok". scipy's Hungarian solver (linear_sum_assignment) minimises the total cost; assigned
pairs with a negative cost are the matches. Tag P/R = matches / |P| and matches / |G|; location P/R =
location-ok matches / boxes on each side (0 when a side has no box).

synonymy(a, b) is 1 when one tag is a substring of the other (raw, case-sensitive, as the official
code); otherwise the Jaccard overlap of the WordNet 3.0 noun lemma names of all their words, read from the
table shipped in the repo (``wordnet_table.py``, the same answers as nltk + WordNet 3.0).

Zero-entity GT (the official code divides by zero): tag and location score 1 when the prediction has no
entity either (nothing to find, nothing invented), else 0. The report counts such images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pancapchain.data.boxes import box_iou_matrix_f32
from pancapchain.data.schema import Box
from pancapchain.eval.embed import Embedder, cosine_matrix
from pancapchain.eval.scores import PERFECT, PRF, ZERO
from pancapchain.eval.wordnet_table import TABLE_PATH, load_table


@dataclass(frozen=True)
class MatchConfig:
    """Matching constants; the defaults are the official ones (ethr = lthr = 0.5)."""

    embed_threshold: float = 0.5
    iou_threshold: float = 0.5
    exact_cost: float = -1000.0
    synonym_weight: float = 100.0
    embed_weight: float = 10.0
    unmatched_cost: float = 1e6
    use_wordnet: bool = True


OFFICIAL = MatchConfig()
"""The official constants (the default everywhere)."""


@dataclass(frozen=True)
class TaggedEntity:
    """What the matcher sees of an entity: its tag and (optionally) one normalized xyxy box."""

    tag: str
    box: Box | None = None


@dataclass
class EntityMatch:
    """Result of matching GT entities (rows) to predicted entities (columns)."""

    pairs: list[tuple[int, int]]
    loc_ok: set[tuple[int, int]]
    cost: np.ndarray
    n_gt: int
    n_pred: int
    n_gt_boxes: int
    n_pred_boxes: int
    tag: PRF = field(default=ZERO)
    loc: PRF = field(default=ZERO)

    @property
    def mapping(self) -> dict[int, int]:
        """GT index -> predicted index for every matched pair."""
        return dict(self.pairs)


# ----------------------------------------------------------------------------------------------- WordNet


def wordnet_status(use_wordnet: bool = True) -> str:
    """One line for the report: which synonym rule is in force."""
    if not use_wordnet:
        return "containment only: --no-wordnet"
    if load_table() is None:
        return f"containment only: the WordNet table {TABLE_PATH} is missing (rebuild it, see docs/evaluation.md)"
    return "wordnet: WordNet 3.0 noun lemmas (shipped table, = nltk) Jaccard + containment"


@functools.lru_cache(maxsize=65536)
def _noun_lemmas(word: str) -> frozenset[str]:
    table = load_table()
    return frozenset() if table is None else table.noun_lemma_names(word)


def synonym_score(a: str, b: str, use_wordnet: bool = True) -> float:
    """1 if either tag contains the other, else the WordNet noun-lemma Jaccard overlap (0 without WordNet)."""
    if a in b or b in a:
        return 1.0
    if not use_wordnet:
        return 0.0
    lemmas_a = frozenset().union(*(_noun_lemmas(w) for w in a.split()))
    lemmas_b = frozenset().union(*(_noun_lemmas(w) for w in b.split()))
    return len(lemmas_a & lemmas_b) / (len(lemmas_a | lemmas_b) + 1e-6)


# ---------------------------------------------------------------------------------------------- matching


def _semantic_costs(
    gt_tags: Sequence[str], pred_tags: Sequence[str], embedder: Embedder | None, config: MatchConfig
) -> np.ndarray:
    """(|G|, |P|) tag-only costs; embeddings are computed only for pairs the first two rules leave open."""
    cost = np.full((len(gt_tags), len(pred_tags)), np.nan)
    open_pairs = []
    for i, g in enumerate(gt_tags):
        for j, p in enumerate(pred_tags):
            if g == p:
                cost[i, j] = config.exact_cost
                continue
            syn = synonym_score(g, p, config.use_wordnet)
            if syn > 0:
                cost[i, j] = -config.synonym_weight * syn
            else:
                open_pairs.append((i, j))
    if open_pairs:
        sim = _open_pair_similarity(gt_tags, pred_tags, open_pairs, embedder)
        for (i, j), s in zip(open_pairs, sim):
            cost[i, j] = -config.embed_weight * s if s >= config.embed_threshold else config.unmatched_cost
    return cost


def _open_pair_similarity(gt_tags, pred_tags, open_pairs, embedder: Embedder | None) -> list[float]:
    if embedder is None:
        return [0.0] * len(open_pairs)
    rows = sorted({i for i, _ in open_pairs})
    cols = sorted({j for _, j in open_pairs})
    sim = cosine_matrix(embedder, [gt_tags[i] for i in rows], [pred_tags[j] for j in cols])
    row_at = {i: k for k, i in enumerate(rows)}
    col_at = {j: k for k, j in enumerate(cols)}
    return [float(sim[row_at[i], col_at[j]]) for i, j in open_pairs]


def match_cost_matrix(
    gt: Sequence[TaggedEntity],
    pred: Sequence[TaggedEntity],
    embedder: Embedder | None,
    config: MatchConfig = OFFICIAL,
) -> tuple[np.ndarray, np.ndarray]:
    """The official cost matrix (|G|, |P|) and the boolean location-ok matrix of the same shape."""
    cost = _semantic_costs([e.tag for e in gt], [e.tag for e in pred], embedder, config)
    loc_ok = np.zeros(cost.shape, dtype=bool)
    rows = [i for i, e in enumerate(gt) if e.box is not None]
    cols = [j for j, e in enumerate(pred) if e.box is not None]
    if rows and cols:
        iou = box_iou_matrix_f32(np.array([gt[i].box for i in rows]), np.array([pred[j].box for j in cols]))
        for r, i in enumerate(rows):
            for c, j in enumerate(cols):
                # float32 IoU compared with the threshold, as the official torch code does
                if cost[i, j] < 0 and iou[r, c] >= np.float32(config.iou_threshold):
                    cost[i, j] -= float(iou[r, c])
                    loc_ok[i, j] = True
    return cost, loc_ok


def match_entities(
    gt: Sequence[TaggedEntity],
    pred: Sequence[TaggedEntity],
    embedder: Embedder | None,
    config: MatchConfig = OFFICIAL,
) -> EntityMatch:
    """Hungarian matching of GT to predicted entities plus the tag and location P/R/F1 of this image."""
    cost, loc_flags = match_cost_matrix(gt, pred, embedder, config)
    pairs: list[tuple[int, int]] = []
    if cost.size:
        rows, cols = linear_sum_assignment(cost)
        pairs = [(int(i), int(j)) for i, j in zip(rows, cols) if cost[i, j] < 0]
    loc_ok = {(i, j) for i, j in pairs if loc_flags[i, j]}
    n_gt_boxes = sum(e.box is not None for e in gt)
    n_pred_boxes = sum(e.box is not None for e in pred)
    match = EntityMatch(pairs, loc_ok, cost, len(gt), len(pred), n_gt_boxes, n_pred_boxes)
    if not gt:
        match.tag = match.loc = PERFECT if not pred else ZERO
        return match
    match.tag = PRF.from_counts(len(pairs), len(pred), len(pairs), len(gt))
    match.loc = PRF.from_counts(len(loc_ok), n_pred_boxes, len(loc_ok), n_gt_boxes)
    return match


def entity_layout(match: EntityMatch, gt: Sequence[TaggedEntity], pred: Sequence[TaggedEntity]) -> dict[str, list[dict]]:
    """Both sides' entities with their match status, for reports: ``{"gt": [...], "pred": [...]}``, each
    entity ``{"tag", "box" (normalized xyxy or None), "match" (index on the other side or None), "loc_ok"}``.
    A GT entity without a match is *missed*, a predicted one *extra*."""
    g2p = match.mapping
    p2g = {p: g for g, p in g2p.items()}

    def rows(entities: Sequence[TaggedEntity], other: dict[int, int], gt_side: bool) -> list[dict]:
        out = []
        for i, e in enumerate(entities):
            j = other.get(i)
            pair = (i, j) if gt_side else (j, i)
            out.append({"tag": e.tag, "box": None if e.box is None else [round(float(v), 4) for v in e.box],
                        "match": j, "loc_ok": j is not None and pair in match.loc_ok})
        return out

    return {"gt": rows(gt, g2p, True), "pred": rows(pred, p2g, False)}
