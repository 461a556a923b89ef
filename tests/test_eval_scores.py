"""PancapScore arithmetic: F1, macro means, the overall formula, yes/no pair scores (hand-computed)."""

from __future__ import annotations

import pytest

from pancapchain.eval.scores import (
    PRF,
    answer_pair_score,
    f1_score,
    failed_image,
    macro_mean,
    overall_score,
    pancapscore,
)


def test_f1_hand_values():
    assert f1_score(0.5, 1.0) == pytest.approx(2 * 0.5 / 1.5)  # 0.6667
    assert f1_score(0.0, 0.0) == 0.0
    assert f1_score(1.0, 0.0) == 0.0
    prf = PRF.from_counts(hits_pred=2, n_pred=4, hits_gt=2, n_gt=3)
    assert (prf.precision, prf.recall) == (0.5, pytest.approx(2 / 3))
    assert prf.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 0.5714
    assert PRF.from_counts(0, 0, 0, 0) == PRF(0.0, 0.0, 0.0)


def test_overall_formula_matches_the_project_page_example():
    # Molmo-72B val on the project page: 52.06 / 10.03 / 36.88 / 25.90 / 76.78 -> 132.55 (reported 132.53)
    f1s = {"tag": 52.06, "loc": 10.03, "attr": 36.88, "rel": 25.90, "global": 76.78}
    assert overall_score(f1s) == pytest.approx(132.548, abs=1e-9)
    assert round(overall_score(f1s), 2) == 132.55
    fractions = {d: PRF(0, 0, v / 100) for d, v in f1s.items()}
    assert pancapscore(fractions) == pytest.approx(132.548)
    assert pancapscore({d: PRF(1, 1, 1) for d in f1s}) == pytest.approx(410.0)


def test_overall_needs_every_dimension():
    with pytest.raises(ValueError, match="global"):
        overall_score({"tag": 1, "loc": 1, "attr": 1, "rel": 1})


def test_macro_mean_averages_p_r_f1_separately():
    a = {d: PRF(1.0, 0.5, f1_score(1.0, 0.5)) for d in ("tag", "loc", "attr", "rel", "global")}
    b = {d: PRF(0.0, 0.0, 0.0) for d in a}
    mean = macro_mean([a, b])
    assert mean["tag"].precision == 0.5
    assert mean["tag"].recall == 0.25
    assert mean["tag"].f1 == pytest.approx(f1_score(1.0, 0.5) / 2)  # 0.3333, not F1(0.5, 0.25)
    assert macro_mean([])["tag"] == PRF()


@pytest.mark.parametrize(
    ("answers", "score"),
    [
        ('"Yes", "No"', 1.0),
        ('"yes", "yes"', 0.5),
        ('"No", "No"', 0.5),
        ('"No", "Yes"', 0.0),
        ("'YES' , 'no'", 1.0),
        ('"Yes"', 0.5),  # the second answer is missing
        ('"Yes", "No", "Maybe"', 1.0),  # pieces 0 and 1 only
        ("", 0.0),
    ],
)
def test_answer_pair_score(answers, score):
    assert answer_pair_score(answers) == score


def test_failed_image_is_zero_with_reason():
    res = failed_image("img7", "missing prediction")
    assert res.overall == 0.0
    assert res.warnings == ["missing prediction"]
    d = res.to_dict()
    assert d["status"] == "missing prediction" and d["scores"]["tag"]["f1"] == 0.0
