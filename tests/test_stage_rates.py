"""data.stage_rates: how many examples of each task a scene gives per epoch (repeat or thin a task)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import write_synth_scenes

from pancapchain.config import ConfigError, load_recipe
from pancapchain.constants import STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prompts import load_prompts
from pancapchain.train.dataset import collect_stage_examples, copies_of


def test_copies_follow_the_rate_and_repeat_across_calls():
    """Whole rates are exact; a fractional part is a seeded draw, the same on every call (resume, ranks)."""
    ids = [f"scene-{i}" for i in range(4000)]
    assert [copies_of(r, "x", "caption", 0) for r in (1, 1.0, 2, 3)] == [1, 1, 2, 3]
    half = Counter(copies_of(0.5, i, "discover", 7) for i in ids)
    assert set(half) == {0, 1} and 1800 < half[1] < 2200
    more = Counter(copies_of(1.25, i, "discover", 7) for i in ids)
    assert set(more) == {1, 2} and 800 < more[2] < 1200
    assert [copies_of(0.5, i, "discover", 7) for i in ids] == [copies_of(0.5, i, "discover", 7) for i in ids]
    assert [copies_of(0.5, i, "discover", 7) for i in ids] != [copies_of(0.5, i, "label", 7) for i in ids]


def _scenes(root: Path, n: int) -> Path:
    return write_synth_scenes(root, n, seed=4)


def test_rates_repeat_and_thin_tasks(tmp_path: Path):
    """caption x2 (the same example twice), discover x0.5 (about half the scenes), others once; a repeated
    stage 3 hides another subset in its second copy."""
    train = _scenes(tmp_path / "data", 24)
    prompts, codec = load_prompts(), BoxCodec("bins")
    one, report = collect_stage_examples(train, None, prompts, codec, stages=STAGES)
    rated, rated_report = collect_stage_examples(train, None, prompts, codec, stages=STAGES,
                                                 rates={"caption": 2.0, "discover": 0.5})
    count = Counter(ex.stage for ex, *_ in rated)
    assert Counter(ex.stage for ex, *_ in one) == {s: 24 for s in STAGES}
    assert count["localize"] == count["label"] == 24 and count["caption"] == 48
    assert count["discover"] == sum(copies_of(0.5, f"syn-train-{i:06d}", "discover", 0) for i in range(24))
    assert 4 <= count["discover"] <= 20
    assert rated_report.kept == report.kept == 24
    captions = [(ex.sample_id, ex.prompt, ex.target) for ex, *_ in rated if ex.stage == "caption"]
    assert all(n == 2 for n in Counter(captions).values())

    twice, _ = collect_stage_examples(train, None, prompts, codec, stages=("discover",), rates={"discover": 2})
    by_scene: dict[str, list[str]] = {}
    for ex, *_ in twice:
        by_scene.setdefault(ex.sample_id, []).append(ex.prompt)
    assert all(len(p) == 2 for p in by_scene.values()) and len(by_scene) == 24
    assert sum(a != b for a, b in by_scene.values()) >= 6  # another hidden subset, where the scene has room


@pytest.mark.parametrize("override, words", [
    ("data.stage_rates={captoin: 2}", "keys are tasks"),
    ("data.stage_rates={discover: 0}", "values numbers > 0"),
    ("data.stage_rates={region: 2}", "does not train"),
])
def test_bad_rates_fail_with_what_to_change(override: str, words: str):
    with pytest.raises(ConfigError, match=words):
        load_recipe(None, [override])


def test_rates_reach_the_recipe():
    cfg = load_recipe(None, ["data.stage_rates={caption: 2, discover: 0.5}"])
    assert cfg.data.stage_rates == {"caption": 2, "discover": 0.5}


def test_a_null_rate_unsets_the_recipes_rate():
    """An override cannot delete a dict key: null is how a variant that drops stage 3 unsets its rate."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_chain.yaml"
    assert load_recipe(recipe).data.stage_rates == {"discover": 0.25}
    with pytest.raises(ConfigError, match=r"data.stage_rates.discover=null"):
        load_recipe(recipe, ["data.stages.discover=0"])
    dropped = load_recipe(recipe, ["data.stages.discover=0", "data.stage_rates.discover=null"])
    assert dropped.data.stage_rates == {} and dropped.data.stages["discover"] == 0
    kept = load_recipe(None, ["data.stage_rates={caption: 2, discover: 0.5}", "data.stage_rates.discover=null"])
    assert kept.data.stage_rates == {"caption": 2}


def test_samples_read_by_the_caller_are_not_read_again(tmp_path: Path):
    """``loaded`` (pretrain-tiny reads the file once for the tokenizer and the tower) gives the same examples."""
    from pancapchain.data.io import load_samples

    train = _scenes(tmp_path / "data", 6)
    prompts, codec = load_prompts(), BoxCodec("bins")
    read, _ = collect_stage_examples(train, None, prompts, codec, stages=STAGES)
    loaded = load_samples(train)
    train.unlink()  # a second read would fail now
    given, report = collect_stage_examples(train, None, prompts, codec, stages=STAGES, loaded=loaded)
    assert [(ex.sample_id, ex.stage, ex.prompt, ex.target) for ex, *_ in given] == \
        [(ex.sample_id, ex.stage, ex.prompt, ex.target) for ex, *_ in read]
    assert report.kept == 6
