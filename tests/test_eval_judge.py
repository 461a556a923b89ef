"""LLM-judge path: a fake judge replaying recorded protocol responses (both directions, hand-computed
scores), the per-image cache (resume), and the pipeline driven by the real ``pancapchain eval`` runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pancapchain.eval.embed import HashingEmbedder
from pancapchain.eval.judge import JudgeCache
from pancapchain.eval.judge_pipeline import JudgeImage, run_judge
from pancapchain.eval.judge_prompts import JudgePrompts
from pancapchain.eval.runner import EvalOptions, evaluate

GT_CAPTION = "A brown dog [[0.1, 0.1, 0.5, 0.5]] sits on green grass [[0.0, 0.5, 1.0, 1.0]]. The scene feels calm."
PRED_CAPTION = (
    "A dog <box>[[100, 100, 500, 500]]</box> lies on the grass <box>[[0, 500, 1000, 1000]]</box>. "
    "A red ball <box>[[600, 100, 700, 200]]</box> is nearby. It is sunny."
)

RECORDED = {
    "gt_content": """1 | entity -->> (whole, dog)
2 | entity -->> (whole, grass)
3 | location -->> (entity 1, [0.1, 0.1, 0.5, 0.5])
4 | location -->> (entity 2, [0.0, 0.5, 1.0, 1.0])
5 | attribute -->> (entity 1, "entity 1 is brown")
6 | attribute -->> (entity 2, "entity 2 is green")
7 | relation -->> (entity 1, entity 2, "entity 1 sits on entity 2")
8 | global -->> ("the scene feels calm")""",
    "gt_questions": """1 | entity -->> (whole, dog)
2 | entity -->> (whole, grass)
3 | location -->> (entity 1, [0.1, 0.1, 0.5, 0.5])
4 | location -->> (entity 2, [0.0, 0.5, 1.0, 1.0])
5 | attribute -->> (entity 1, "Is entity 1 brown?", "Is entity 1 white?")
6 | attribute -->> (entity 2, "Is entity 2 green?", "Is entity 2 yellow?")
7 | relation -->> (entity 1, entity 2, "Does entity 1 sit on entity 2?", "Does entity 1 fly over entity 2?")
8 | global -->> ("Does the scene feel calm?", "Does the scene feel tense?")""",
    "pred_content": """1 | entity -->> (whole, ball)
2 | entity -->> (whole, dog)
3 | entity -->> (whole, grass)
4 | location -->> (entity 2, [0.100, 0.100, 0.500, 0.500])
5 | location -->> (entity 3, [0.000, 0.500, 1.000, 1.000])
6 | location -->> (entity 1, [0.600, 0.100, 0.700, 0.200])
7 | attribute -->> (entity 1, "entity 1 is red")
8 | relation -->> (entity 2, entity 3, "entity 2 lies on entity 3")
9 | global -->> ("it is sunny")
this line is chatter, not a protocol line""",
    "pred_questions": """1 | entity -->> (whole, ball)
2 | entity -->> (whole, dog)
3 | entity -->> (whole, grass)
4 | location -->> (entity 2, [0.100, 0.100, 0.500, 0.500])
5 | location -->> (entity 3, [0.000, 0.500, 1.000, 1.000])
6 | location -->> (entity 1, [0.600, 0.100, 0.700, 0.200])
7 | attribute -->> (entity 1, "Is entity 1 red?", "Is entity 1 blue?")
8 | relation -->> (entity 2, entity 3, "Does entity 2 lie on entity 3?", "Does entity 2 jump over entity 3?")
9 | global -->> ("Is it sunny?", "Is it raining?")""",
    # GT questions answered by the prediction (recall): IDs 7.. follow the pred context lines 1-6
    "pred_answers": """7 | attribute -->> (entity 2, "No", "No")
8 | attribute -->> (entity 3, "No", "No")
9 | relation -->> (entity 2, entity 3, "Yes", "No")
10 | global -->> ("No", "No")
11 | attribute -->> (entity 2, "Yes", "No")""",
    # pred questions answered by the GT (precision): the ball is unmatched, so only IDs 5 (relation), 6 (global)
    "gt_answers": """5 | relation -->> (entity 1, entity 2, "Yes", "No")
6 | global -->> ("No", "No")""",
}


class RecordedJudge:
    """Replays RECORDED by step and keeps every prompt it was given."""

    name = "recorded-fake"

    def __init__(self):
        self.prompts: dict[str, str] = {}
        self.calls = 0

    def generate(self, requests):
        self.calls += len(requests)
        for req in requests:
            self.prompts[req.step] = req.prompt
        return [RECORDED[req.step] for req in requests]


@pytest.fixture
def prompts() -> JudgePrompts:
    return JudgePrompts.load()


def _judge_one(prompts, cache=None, judge=None):
    judge = judge or RecordedJudge()
    image = JudgeImage("img1", GT_CAPTION, PRED_CAPTION.replace("<box>[[100, 100, 500, 500]]</box>", "[[0.1, 0.1, 0.5, 0.5]]"))
    results, stats = run_judge([image], judge, prompts, HashingEmbedder(), cache)
    return results[0], stats, judge


def test_fake_judge_both_directions_hand_computed(prompts):
    res, stats, judge = _judge_one(prompts)
    s = res.scores
    assert (s["tag"].precision, s["tag"].recall) == pytest.approx((2 / 3, 1.0))  # ball is extra
    assert s["tag"].f1 == pytest.approx(0.8) and s["loc"].f1 == pytest.approx(0.8)
    # recall: (0.5 + 0.5) / 2 GT attributes; precision: the pred attribute (ball) was never asked -> 0
    assert (s["attr"].precision, s["attr"].recall, s["attr"].f1) == pytest.approx((0.0, 0.5, 0.0))
    assert (s["rel"].precision, s["rel"].recall, s["rel"].f1) == pytest.approx((1.0, 1.0, 1.0))
    assert (s["global"].precision, s["global"].recall, s["global"].f1) == pytest.approx((0.5, 0.5, 0.5))
    assert res.overall == pytest.approx(100 * (0.8 + 0.8 + 0.0 + 1.0 + 0.1 * 0.5))  # 265.0
    # one chatter line in pred_content + one answer to an ID that was never asked
    assert res.counts["judge_lines_dropped"] == 2 and res.warnings
    assert stats == {"calls": 6, "requests": 6}


def test_questions_are_rewritten_into_the_other_sides_ids(prompts):
    _, _, judge = _judge_one(prompts)
    to_pred = judge.prompts["pred_answers"]
    assert "lies on the grass" in to_pred and "sits on green grass" not in to_pred
    assert "1 | entity -->> (whole, ball)" in to_pred and "6 | location -->> (entity 1, [0.600, 0.100, 0.700, 0.200])" in to_pred
    assert '7 | attribute -->> (entity 2, "Is entity 2 brown?", "Is entity 2 white?")' in to_pred
    assert '9 | relation -->> (entity 2, entity 3, "Does entity 2 sit on entity 3?", "Does entity 2 fly over entity 3?")' in to_pred
    assert '10 | global -->> ("Does the scene feel calm?", "Does the scene feel tense?")' in to_pred
    to_gt = judge.prompts["gt_answers"]
    assert '5 | relation -->> (entity 1, entity 2, "Does entity 1 lie on entity 2?"' in to_gt
    assert "red" not in to_gt.split("Lines:")[-1]  # the unmatched ball's attribute is not asked
    assert "chatter" not in judge.prompts["pred_questions"]  # only protocol lines are passed on


def test_cache_makes_a_rerun_free_and_identical(prompts, tmp_path):
    cache = JudgeCache(tmp_path / "cache", salt=f"{prompts.fingerprint()}|recorded-fake")
    first, stats1, _ = _judge_one(prompts, cache)
    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 1 and set(json.loads(files[0].read_text())["steps"]) == set(RECORDED)
    fresh = JudgeCache(tmp_path / "cache", salt=f"{prompts.fingerprint()}|recorded-fake")
    second, stats2, judge2 = _judge_one(prompts, fresh)
    assert stats1["calls"] == 6 and stats2["calls"] == 0 and judge2.calls == 0
    assert second.to_dict() == first.to_dict()
    other_model = JudgeCache(tmp_path / "cache", salt=f"{prompts.fingerprint()}|another-judge")
    assert _judge_one(prompts, other_model)[1]["calls"] == 6  # another judge is not served stale answers


def test_empty_prediction_asks_nothing_about_it(prompts):
    judge = RecordedJudge()
    results, stats = run_judge([JudgeImage("img1", GT_CAPTION, "   ")], judge, prompts, HashingEmbedder())
    assert set(judge.prompts) == {"gt_content", "gt_questions"}  # no pred extraction, nothing answerable
    assert results[0].overall == 0.0 and stats["calls"] == 2


def test_runner_judge_mode_with_fake_backend(tmp_path: Path):
    gt = {"id": "img1", "image": "img1.png", "width": 1000, "height": 1000, "caption": GT_CAPTION,
          "entities": [{"id": 0, "tag": "dog", "box": [0.1, 0.1, 0.5, 0.5]},
                       {"id": 1, "tag": "grass", "box": [0.0, 0.5, 1.0, 1.0]}]}
    (tmp_path / "gt.jsonl").write_text(json.dumps(gt) + "\n")
    (tmp_path / "pred.jsonl").write_text(json.dumps({"id": "img1", "caption": PRED_CAPTION}) + "\n")
    judge = RecordedJudge()
    result = evaluate(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl",
                      EvalOptions(judge="hf:fake", caption_metrics=False), out_dir=tmp_path / "out",
                      embedder=HashingEmbedder(), judge_backend=judge)
    assert "[[0.100, 0.100, 0.500, 0.500]]" in judge.prompts["pred_content"]  # grid boxes converted first
    assert result.metrics["pancapscore"] == pytest.approx(265.0)
    assert result.metrics["judge_calls"]["calls"] == 6 and result.metrics["judge_calls"]["judge"] == "recorded-fake"
    assert list((tmp_path / "out" / "judge_cache").glob("*.json"))
