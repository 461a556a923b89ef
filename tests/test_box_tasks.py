"""The extra box tasks (segcap, region): exact examples, determinism, prompt sets, recipes and dataset rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pancapchain.config import ConfigError, active_stages, load_recipe
from pancapchain.constants import EXTRA_TASKS, STAGES, TASKS
from pancapchain.data.box_tasks import (
    MENTION_IOU,
    NoTaskExample,
    build_region,
    build_segcap,
    grounded_mentions,
    raw_sentence_pieces,
    segcap_target,
)
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.io import save_samples
from pancapchain.data.prompts import PromptError, default_prompt_root, load_prompts
from pancapchain.data.schema import Entity, PanopticSample, Relation
from pancapchain.data.stages import build_stage_examples
from pancapchain.train.dataset import collect_stage_examples

PROMPTS = load_prompts()
ASMV2, NORMALIZED = BoxCodec("asmv2"), BoxCodec("normalized")
SEGCAP = ("Please describe the entity at {} together with the entities related to it, giving the bounding box "
          "of every entity you mention.")
REGION = "Please write a short caption for the region {}."

SKY, CIRCLE, SQUARE, TRIANGLE, TREE = (
    (0.0, 0.0, 1.0, 0.3), (0.1, 0.4, 0.3, 0.7), (0.35, 0.45, 0.55, 0.65), (0.7, 0.4, 0.9, 0.8), (0.0, 0.8, 0.1, 1.0)
)
S0 = "The sky [[0.000, 0.000, 1.000, 0.300]] is clear."
S1 = ("A large striped red circle [[0.100, 0.400, 0.300, 0.700]] sits next to a small blue square "
      "[[0.350, 0.450, 0.550, 0.650]].")
S2 = "The blue square is dark."
S3 = "A green triangle [[0.700, 0.400, 0.900, 0.800]] is on the right."
SAMPLE = PanopticSample(
    "hand-1", "images/hand-1.png", 640, 480,
    (Entity(0, "red circle", CIRCLE), Entity(1, "blue square", SQUARE), Entity(2, "green triangle", TRIANGLE),
     Entity(3, "sky", SKY, is_thing=False), Entity(4, "tree", TREE)),
    caption=f"{S0} {S1} {S2} {S3}\n\nNothing else is here.",
    relations=(Relation(0, "left of", 2),),
)
# central entity -> its sentences: own ones, its relation partner's (2 for 0), its co-mentioned ones' (1 <-> 0)
EXPECTED_SEGCAP = {0: f"{S1} {S3}", 1: S1, 2: f"{S1} {S3}", 3: S0}
EXPECTED_REGION = {0: "large striped red circle", 1: "small blue square", 2: "green triangle", 3: "sky"}
BOXES = {0: CIRCLE, 1: SQUARE, 2: TRIANGLE, 3: SKY}


def test_tasks_constant_extends_the_chain_stages():
    assert TASKS == STAGES + EXTRA_TASKS == ("localize", "label", "discover", "caption", "segcap", "region", "direct")


def test_segcap_target_per_central_entity_exact():
    mentions = grounded_mentions(SAMPLE)
    assert [sorted(g.entity_ids) for g in mentions] == [[3], [0], [1], [2]]
    for central, expected in EXPECTED_SEGCAP.items():
        assert segcap_target(SAMPLE, central, mentions) == expected


@pytest.mark.parametrize("codec", [NORMALIZED, ASMV2])
def test_seeded_segcap_and_region_examples_are_the_expected_pairs(codec):
    w, h = SAMPLE.width, SAMPLE.height
    segcap_pairs = {(SEGCAP.format(codec.encode([BOXES[i]], w, h)), codec.convert_text(t, w, h))
                    for i, t in EXPECTED_SEGCAP.items()}
    region_pairs = {(REGION.format(codec.encode([BOXES[i]], w, h)), t) for i, t in EXPECTED_REGION.items()}
    got_segcap = {build_segcap(SAMPLE, PROMPTS, codec, seed) for seed in range(40)}
    got_region = {build_region(SAMPLE, PROMPTS, codec, seed) for seed in range(40)}
    assert got_segcap == segcap_pairs  # every mentioned entity is drawn by some seed; the tree never
    assert got_region == region_pairs


def test_asmv2_segcap_example_literal():
    prompt, target = next(build_segcap(SAMPLE, PROMPTS, ASMV2, s) for s in range(40)
                          if build_segcap(SAMPLE, PROMPTS, ASMV2, s)[1].startswith("The sky"))
    # 640x480 -> padded square 640, y grid = 125 + 750 * y
    assert prompt == SEGCAP.format("<box>[[0, 125, 1000, 350]]</box>")
    assert target == "The sky <box>[[0, 125, 1000, 350]]</box> is clear."


def test_choice_is_deterministic_and_independent_of_the_hash_seed():
    first = [build_segcap(SAMPLE, PROMPTS, ASMV2, s) for s in range(10)]
    assert first == [build_segcap(SAMPLE, PROMPTS, ASMV2, s) for s in range(10)]
    code = (
        "import json, sys; from pancapchain.data.box_tasks import build_segcap as s, build_region as r;"
        "from pancapchain.data.boxes import BoxCodec; from pancapchain.data.prompts import load_prompts;"
        "from pancapchain.data.schema import PanopticSample as P; x = P.from_dict(json.loads(sys.argv[1]));"
        "p, c = load_prompts(), BoxCodec('asmv2'); print([s(x, p, c, i) for i in range(8)], [r(x, p, c, i) for i in "
        "range(8)])"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code, json.dumps(SAMPLE.to_dict())], capture_output=True, text=True,
                       timeout=60, check=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout
        for seed in ("1", "2")
    }
    expected = [build_segcap(SAMPLE, PROMPTS, ASMV2, i) for i in range(8)], [
        build_region(SAMPLE, PROMPTS, ASMV2, i) for i in range(8)]
    assert outputs == {f"{expected[0]} {expected[1]}\n"}


def test_nothing_to_build_says_why():
    bare = PanopticSample("bare", "b.png", 10, 10, (Entity(0, "cat", (0.1, 0.1, 0.5, 0.5)),), caption="  ")
    with pytest.raises(NoTaskExample, match="empty caption"):
        build_segcap(bare, PROMPTS, NORMALIZED)
    off = PanopticSample("off", "b.png", 10, 10, (Entity(0, "cat", (0.1, 0.1, 0.5, 0.5)),),
                         caption="A cat [[0.5, 0.5, 0.9, 0.9]] sleeps.")  # the box grounds no entity
    with pytest.raises(NoTaskExample, match=f"IoU >= {MENTION_IOU}"):
        build_segcap(off, PROMPTS, NORMALIZED)
    # region falls back to the entity tag (weak supervision), and needs at least one entity
    assert build_region(bare, PROMPTS, NORMALIZED) == (REGION.format("[[0.100, 0.100, 0.500, 0.500]]"), "cat")
    with pytest.raises(NoTaskExample, match="no entities"):
        build_region(PanopticSample("none", "n.png", 10, 10, (), caption="Empty."), PROMPTS, NORMALIZED)
    skipped: list = []
    examples = build_stage_examples(off, PROMPTS, NORMALIZED, ("caption", "segcap", "region"), skipped=skipped)
    assert [e.stage for e in examples] == ["caption", "region"]
    assert skipped == [("segcap", f"no caption box matches an entity box (IoU >= {MENTION_IOU})")]


def test_mention_threshold_matches_the_mask_targets():
    from pancapchain.mask.targets import MATCH_IOU

    assert MENTION_IOU == MATCH_IOU


def test_raw_sentences_follow_the_parser_for_list_items_and_leading_boxes():
    caption = ("Items:\n- **Car:** [[0.1, 0.1, 0.5, 0.5]] The car is white.\n- [[0.5, 0.5, 0.9, 0.9]]: A dog sits."
               " It barks at the car [[0.1, 0.1, 0.5, 0.5]].")
    pieces = [caption[a:b] for a, b in raw_sentence_pieces(caption)]
    assert pieces == ["Items:\n", "- **Car:** [[0.1, 0.1, 0.5, 0.5]] The car is white.\n- [[0.5, 0.5, 0.9, 0.9]]: "
                      "A dog sits.", " It barks at the car [[0.1, 0.1, 0.5, 0.5]]."]
    sample = PanopticSample("li", "l.png", 10, 10, (Entity(0, "car", (0.1, 0.1, 0.5, 0.5)),
                                                    Entity(1, "dog", (0.5, 0.5, 0.9, 0.9))), caption=caption)
    # the dog box leads its line, so the parser (and the raw split) give it to the car's sentence
    assert segcap_target(sample, 1, grounded_mentions(sample)) == (
        "**Car:** [[0.1, 0.1, 0.5, 0.5]] The car is white. [[0.5, 0.5, 0.9, 0.9]]: A dog sits. "
        "It barks at the car [[0.1, 0.1, 0.5, 0.5]].")


def test_synthetic_region_target_is_the_mention_phrase_with_adjectives():
    from pancapchain.data.synth import generate_scene

    sample, _ = generate_scene(3, 0, 64)
    seen = set()
    for seed in range(30):
        prompt, phrase = build_region(sample, PROMPTS, NORMALIZED, seed)
        [entity] = [e for e in sample.entities if prompt == REGION.format(NORMALIZED.encode([e.box], 64, 64))]
        seen.add(entity.id)
        if entity.is_thing:  # "a small striped blue diamond [[..]]": size, pattern, colour, kind
            assert phrase == " ".join([*entity.attributes[:3], entity.tag.split()[-1]])  # "partially hidden" is a clause
        else:  # "The sky [[..]]", "The gray ground [[..]]"
            assert phrase.endswith(entity.tag)
    assert len(seen) > 4


# ---------------------------------------------------------------- prompts and recipes


def test_prompt_set_with_and_without_the_extra_files(tmp_path):
    assert set(PROMPTS.stages) == set(TASKS)
    assert PROMPTS.render("segcap", box="B") == SEGCAP.format("B")
    assert PROMPTS.render("region", box="B") == REGION.format("B")
    shutil.copytree(default_prompt_root() / "v1", tmp_path / "v1")
    for task in EXTRA_TASKS:
        (tmp_path / "v1" / f"{task}.yaml").unlink()
    bare = load_prompts("v1", root=tmp_path)
    assert set(bare.stages) == set(STAGES)
    bare.require(STAGES)
    with pytest.raises(PromptError, match=r"no template for \['segcap'\].*segcap\.yaml"):
        bare.require(["caption", "segcap"])
    with pytest.raises(PromptError, match="unknown tasks"):
        bare.require(["segment"])


def test_extra_prompt_file_is_validated_like_the_stages(tmp_path):
    shutil.copytree(default_prompt_root() / "v1", tmp_path / "v1")
    path = tmp_path / "v1" / "region.yaml"
    path.write_text(path.read_text().replace("{box}", "{boxes}"))
    with pytest.raises(PromptError, match=r"region\.yaml: template placeholders \['boxes'\]"):
        load_prompts("v1", root=tmp_path)


def test_recipe_defaults_leave_the_extra_tasks_off_and_accept_them():
    cfg = load_recipe(None, [])
    assert cfg.data.stages == {"localize": 1.0, "label": 1.0, "discover": 1.0, "caption": 1.0,
                               "segcap": 0.0, "region": 0.0, "direct": 0.0}
    assert active_stages(cfg) == list(STAGES)
    cfg = load_recipe(None, ["data.stages={segcap: 0.5, region: 0.5}", "mask.stages=[caption,segcap]"])
    assert active_stages(cfg) == [*STAGES, "segcap", "region"]
    cfg = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny_mask.yaml")
    assert cfg.data.stages["segcap"] > 0 and cfg.data.stages["region"] > 0 and "segcap" in cfg.mask.stages


def test_recipe_asking_for_a_task_its_prompt_version_lacks_is_rejected(tmp_path, monkeypatch):
    shutil.copytree(default_prompt_root() / "v1", tmp_path / "v2")
    for name in ("segcap", "region"):
        (tmp_path / "v2" / f"{name}.yaml").unlink()
    monkeypatch.setattr("pancapchain.data.prompts.default_prompt_root", lambda: tmp_path)
    with pytest.raises(ConfigError, match=r"data.stages trains \['segcap'\] but prompt version 'v2' has no"):
        load_recipe(None, ["data.prompt_version=v2", "data.stages={segcap: 1.0}"])
    load_recipe(None, ["data.prompt_version=v2"])  # the extra tasks are off by default: fine


# ---------------------------------------------------------------- dataset rows


def test_dataset_rows_carry_segcap_masks_and_count_samples_without_an_example(tmp_path):
    from pancapchain.data.synth import generate_scene

    scene, image = generate_scene(3, 0, 32)
    (tmp_path / "images").mkdir()
    image.save(tmp_path / scene.image)
    off = PanopticSample("off", scene.image, 32, 32, scene.entities[:1], caption="A thing [[0.9, 0.9, 1.0, 1.0]].")
    save_samples(tmp_path / "d.jsonl", [scene, off])
    pairs, report = collect_stage_examples(tmp_path / "d.jsonl", None, PROMPTS, ASMV2, stages=("caption", "segcap", "region"),
                                           mask_stages=TASKS)
    by_key = {(ex.sample_id, ex.stage): masks for ex, _, masks in pairs}
    assert set(by_key) == {(scene.id, "caption"), (scene.id, "segcap"), (scene.id, "region"), ("off", "caption"),
                           ("off", "region")}
    segcap_masks = json.loads(by_key[(scene.id, "segcap")])
    segcap_row = next(ex for ex, _, _ in pairs if ex.stage == "segcap")
    assert len(segcap_masks) == segcap_row.target.count("</box>") > 0  # every box group grounds a masked entity
    assert by_key[(scene.id, "region")] == ""  # a phrase: no box group, nothing to supervise
    assert report.kept == 2 and report.skipped == [("off/segcap", "no segcap example: no caption box matches an "
                                                                  f"entity box (IoU >= {MENTION_IOU})")]
    with pytest.raises(PromptError, match="no template"):
        collect_stage_examples(tmp_path / "d.jsonl", None, load_prompts_without_extras(tmp_path), ASMV2, stages=("segcap",))


def load_prompts_without_extras(tmp_path: Path):
    shutil.copytree(default_prompt_root() / "v1", tmp_path / "p" / "v1")
    for task in EXTRA_TASKS:
        (tmp_path / "p" / "v1" / f"{task}.yaml").unlink()
    return load_prompts("v1", root=tmp_path / "p")
