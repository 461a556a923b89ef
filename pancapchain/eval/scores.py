"""PancapScore arithmetic: precision/recall/F1 per dimension, macro means, the overall formula.

Everything here works on fractions in [0, 1]; reports multiply by 100 (the paper's convention), so the
overall score ranges over [0, 410]:

    PancapScore = F1_tag + F1_loc + F1_attr + F1_rel + 0.1 * F1_global
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DIMENSIONS = ("tag", "loc", "attr", "rel", "global")
DIMENSION_TITLES = {
    "tag": "Tagging",
    "loc": "Localization",
    "attr": "Attribute",
    "rel": "Relation",
    "global": "Global",
}
OVERALL_WEIGHTS: Mapping[str, float] = {"tag": 1.0, "loc": 1.0, "attr": 1.0, "rel": 1.0, "global": 0.1}


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean; 0 when both are 0 (the official code's convention)."""
    total = precision + recall
    return 0.0 if total == 0 else 2.0 * precision * recall / total


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 of one dimension (one image, or a macro mean over images)."""

    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0

    @staticmethod
    def from_pr(precision: float, recall: float) -> PRF:
        return PRF(precision, recall, f1_score(precision, recall))

    @staticmethod
    def from_counts(hits_pred: float, n_pred: int, hits_gt: float, n_gt: int) -> PRF:
        """P = hits_pred / n_pred, R = hits_gt / n_gt; a zero denominator gives 0 for that side."""
        precision = hits_pred / n_pred if n_pred > 0 else 0.0
        recall = hits_gt / n_gt if n_gt > 0 else 0.0
        return PRF.from_pr(precision, recall)

    def to_dict(self, scale: float = 1.0, digits: int = 4) -> dict[str, float]:
        return {
            "precision": round(self.precision * scale, digits),
            "recall": round(self.recall * scale, digits),
            "f1": round(self.f1 * scale, digits),
        }


ZERO = PRF()
PERFECT = PRF(1.0, 1.0, 1.0)


def zero_scores() -> dict[str, PRF]:
    """The score of an image that could not be evaluated (bad record): 0 in every dimension."""
    return {dim: ZERO for dim in DIMENSIONS}


def macro_mean(per_image: Iterable[Mapping[str, PRF]]) -> dict[str, PRF]:
    """Mean of P, R and F1 separately over images (the official code averages each list on its own).

    The mean F1 is therefore *not* the harmonic mean of the mean P and mean R. No images -> all zero.
    """
    rows = list(per_image)
    if not rows:
        return zero_scores()
    out = {}
    for dim in DIMENSIONS:
        n = len(rows)
        out[dim] = PRF(
            sum(r[dim].precision for r in rows) / n,
            sum(r[dim].recall for r in rows) / n,
            sum(r[dim].f1 for r in rows) / n,
        )
    return out


def overall_score(f1_by_dim: Mapping[str, float], weights: Mapping[str, float] = OVERALL_WEIGHTS) -> float:
    """Weighted sum of the five F1s, in the same unit as the inputs (fractions -> max 4.1, x100 -> 410)."""
    missing = [d for d in DIMENSIONS if d not in f1_by_dim]
    if missing:
        raise ValueError(f"overall_score needs all five dimensions; missing {missing}")
    return sum(weights[d] * f1_by_dim[d] for d in DIMENSIONS)


def pancapscore(scores: Mapping[str, PRF]) -> float:
    """The reported PancapScore (x100, max 410) from per-dimension PRFs in [0, 1]."""
    return 100.0 * overall_score({d: scores[d].f1 for d in DIMENSIONS})


def clean_answer(text: str) -> str:
    """One yes/no answer as the official scorer reads it: quotes, commas and spaces stripped, lower case."""
    return text.strip("'\" ,").lower()


def answer_pair_score(answers: str) -> float:
    """Score of one answered question pair ``"Yes", "No"``: 0.5 per correct half (yes to the true question,
    no to the false one). The text is split on commas and pieces 0 and 1 are read; a missing second half scores 0.
    """
    pieces = answers.split(",")
    score = 0.5 if clean_answer(pieces[0]) == "yes" else 0.0
    if len(pieces) > 1 and clean_answer(pieces[1]) == "no":
        score += 0.5
    return score


@dataclass
class ImageResult:
    """Everything the report keeps about one image.

    ``status`` is "ok", or why the image was scored zero ("missing prediction", "bad prediction: ...").
    ``counts`` holds integers such as gt/pred entities, matches, items per dimension, dropped judge lines.
    """

    id: str
    scores: dict[str, PRF]
    status: str = "ok"
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    matches: list[dict] = field(default_factory=list)
    entities: dict[str, list[dict]] = field(default_factory=dict)  # see matching.entity_layout

    @property
    def overall(self) -> float:
        return pancapscore(self.scores)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "pancapscore": round(self.overall, 4),
            "scores": {d: self.scores[d].to_dict(scale=100.0) for d in DIMENSIONS},
            "counts": dict(self.counts),
            "warnings": list(self.warnings),
            "matches": list(self.matches),
            **({"entities": self.entities} if self.entities else {}),
        }


def failed_image(image_id: str, status: str) -> ImageResult:
    """A zero-scored image with the reason as status and as its warning."""
    return ImageResult(image_id, zero_scores(), status=status, warnings=[status])
