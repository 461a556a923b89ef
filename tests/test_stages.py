"""Stage prompts (prompts/v1 YAML) and the four-stage sample builder: exact strings, split, round trips."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pancapchain.constants import STAGES, TASKS
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prompts import PromptError, default_prompt_root, load_prompts
from pancapchain.data.schema import Entity, PanopticSample, SampleError
from pancapchain.data.stage_parse import StageItem, format_items, parse_stage_output
from pancapchain.data.stages import build_stage_examples, discover_split

PROMPTS = load_prompts()
ASMV2, NORMALIZED = BoxCodec("asmv2"), BoxCodec("normalized")
P1 = "Please localize all entities in this image."
P2 = "Please specify the semantic tags of all entities based on their bounding boxes: "
P3 = "Please specify missing entities and their locations for this image based on these specified entities: "
P4 = (
    "Please provide a hyper-detailed description for this image, including all entities, their locations, "
    "attributes, and relationships, as well as the global image status, based on boxes and tags: "
)
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# 640x480: the padded square is 640 wide, 80 px of padding above and below (y grid range 125..875).
SAMPLE = PanopticSample(
    "ex-1",
    "images/ex-1.jpg",
    640,
    480,
    (
        Entity(0, "woman", (0.25, 0.1, 0.75, 0.9)),
        Entity(1, "wooden  desk", (0.1, 0.5, 0.9, 1.0)),
        Entity(2, "glass wall", (0.0, 0.0, 1.0, 0.6)),
    ),
    caption="A woman [[0.25, 0.1, 0.75, 0.9]] sits at a wooden desk [[0.100, 0.500, 0.900, 1.000]] "
    "in front of a glass wall [[0.0, 0.0, 1.0, 0.6]].\n\n",
)
A_BOXES = ["<box>[[250, 200, 750, 800]]</box>", "<box>[[100, 500, 900, 875]]</box>", "<box>[[0, 125, 1000, 575]]</box>"]
N_BOXES = ["[[0.250, 0.100, 0.750, 0.900]]", "[[0.100, 0.500, 0.900, 1.000]]", "[[0.000, 0.000, 1.000, 0.600]]"]
TAGS = ["woman", "wooden desk", "glass wall"]


def tagged(boxes: list[str], keep: list[int]) -> str:
    return ", ".join(f"{TAGS[i]} {boxes[i]}" for i in keep)


# ---------------------------------------------------------------- prompts


def test_default_prompts_are_the_papers_verbatim():
    assert PROMPTS.version == "v1"
    assert PROMPTS.system == SYSTEM
    assert PROMPTS.render("localize") == P1
    assert PROMPTS.render("label", boxes="B") == P2 + "B"
    assert PROMPTS.render("discover", entities="E") == P3 + "E"
    assert PROMPTS.render("caption", entities="{x} E") == P4 + "{x} E"  # field values are not re-formatted
    assert set(PROMPTS.stages) == set(TASKS)  # v1 also has the extra box tasks (tests/test_box_tasks.py)
    assert default_prompt_root() == Path(__file__).resolve().parents[1] / "prompts"


def test_render_rejects_missing_extra_fields_and_unknown_stage():
    with pytest.raises(ValueError, match="takes fields"):
        PROMPTS.render("label")
    with pytest.raises(ValueError, match="takes fields"):
        PROMPTS.render("localize", boxes="x")
    with pytest.raises(KeyError, match="no stage"):
        PROMPTS.render("segment")


def _copy_prompts(tmp_path: Path) -> Path:
    shutil.copytree(default_prompt_root() / "v1", tmp_path / "v1")
    return tmp_path / "v1"


@pytest.mark.parametrize(
    "name, old, new, message",
    [
        ("label.yaml", "output:", "outptu:", r"label\.yaml: unknown keys \['outptu'\]"),
        ("label.yaml", 'boxes: {boxes}"', 'boxes: {entities}"', r"label\.yaml: template placeholders \['entities'\]"),
        ("caption.yaml", 'tags: {entities}"', 'tags: {entities"', r"caption\.yaml: template has a stray brace"),
        ("discover.yaml", "stage: discover", "stage: label", r"discover\.yaml: stage is 'label'"),
        ("localize.yaml", "version: v1", "version: v2", r"localize\.yaml: version is 'v2'"),
        ("meta.yaml", "system:", "sistem:", r"meta\.yaml: unknown keys"),
        ("localize.yaml", "in this image.", "in this image {boxes}.", r"localize\.yaml: template placeholders"),
    ],
)
def test_loader_rejects_bad_files_naming_them(tmp_path, name, old, new, message):
    directory = _copy_prompts(tmp_path)
    path = directory / name
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(PromptError, match=message):
        load_prompts("v1", root=tmp_path)


def test_loader_reports_missing_file_and_directory(tmp_path):
    (_copy_prompts(tmp_path) / "discover.yaml").unlink()
    with pytest.raises(PromptError, match=r"discover\.yaml: missing prompt file"):
        load_prompts("v1", root=tmp_path)
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts("v9", root=tmp_path)


# ---------------------------------------------------------------- builders: exact strings


def _by_stage(sample, codec, **kw):
    return {ex.stage: ex for ex in build_stage_examples(sample, PROMPTS, codec, **kw)}


@pytest.mark.parametrize("codec, boxes", [(ASMV2, A_BOXES), (NORMALIZED, N_BOXES)])
def test_stage_1_2_4_exact_strings(codec, boxes):
    ex = _by_stage(SAMPLE, codec)
    assert list(ex) == list(STAGES)
    assert (ex["localize"].prompt, ex["localize"].target) == (P1, ", ".join(boxes))
    assert ex["label"].prompt == P2 + ", ".join(boxes)
    assert ex["label"].target == tagged(boxes, [0, 1, 2])
    assert ex["caption"].prompt == P4 + tagged(boxes, [0, 1, 2])
    assert ex["caption"].target == (
        f"A woman {boxes[0]} sits at a wooden desk {boxes[1]} in front of a glass wall {boxes[2]}."
    )
    first = ex["label"]
    assert (first.sample_id, first.image, first.width, first.height) == ("ex-1", "images/ex-1.jpg", 640, 480)


@pytest.mark.parametrize("codec, boxes", [(ASMV2, A_BOXES), (NORMALIZED, N_BOXES)])
def test_stage_3_exact_strings_at_the_ratio_extremes(codec, boxes):
    all_missing = _by_stage(SAMPLE, codec, discover_ratio=(1.0, 1.0))["discover"]
    assert (all_missing.prompt, all_missing.target) == (P3 + "None", tagged(boxes, [0, 1, 2]))
    none_missing = _by_stage(SAMPLE, codec, discover_ratio=(0.0, 0.0))["discover"]
    assert (none_missing.prompt, none_missing.target) == (P3 + tagged(boxes, [0, 1, 2]), "None")


def test_stage_3_default_split_is_a_partition_in_entity_order():
    missing = discover_split("ex-1", 3, (0.3, 0.7), 0)
    ex = _by_stage(SAMPLE, ASMV2)["discover"]
    known_idx = [i for i in range(3) if not missing[i]]
    missing_idx = [i for i in range(3) if missing[i]]
    assert ex.prompt == P3 + (tagged(A_BOXES, known_idx) if known_idx else "None")
    assert ex.target == (tagged(A_BOXES, missing_idx) if missing_idx else "None")


def test_zero_entities_keep_only_the_caption_stage():
    empty = PanopticSample("e", "e.jpg", 10, 20, (), caption="  A plain grey image.  ")
    examples = build_stage_examples(empty, PROMPTS, ASMV2)
    assert [(e.stage, e.prompt, e.target) for e in examples] == [("caption", P4 + "None", "A plain grey image.")]
    no_caption = PanopticSample("e", "e.jpg", 10, 20, (), caption=" ")
    assert build_stage_examples(no_caption, PROMPTS, ASMV2) == []


def test_stage_selection_order_and_argument_errors():
    picked = build_stage_examples(SAMPLE, PROMPTS, ASMV2, stages=("caption", "localize"))
    assert [e.stage for e in picked] == ["caption", "localize"]
    with pytest.raises(ValueError, match="unknown stages"):
        build_stage_examples(SAMPLE, PROMPTS, ASMV2, stages=("localise",))
    with pytest.raises(ValueError, match="discover_ratio"):
        build_stage_examples(SAMPLE, PROMPTS, ASMV2, discover_ratio=(0.8, 0.2))


def test_empty_tag_is_a_sample_error_naming_the_record():
    bad = PanopticSample("bad-7", "b.jpg", 10, 10, (Entity(3, " , ", (0.1, 0.1, 0.2, 0.2)),), caption="x")
    with pytest.raises(SampleError, match=r"record bad-7: entity 3 has an empty tag"):
        build_stage_examples(bad, PROMPTS, ASMV2)


def test_repeated_items_are_written_once_like_the_parser_reads_them():
    box = (0.25, 0.1, 0.75, 0.9)
    dup = PanopticSample("d", "d.jpg", 640, 480, (Entity(0, "cat", box), Entity(1, "cat", box), Entity(2, "pet", box)))
    ex = _by_stage(dup, ASMV2, discover_ratio=(0.0, 0.0))
    assert ex["localize"].target == A_BOXES[0]
    assert ex["label"].prompt == P2 + A_BOXES[0]
    assert ex["label"].target == f"cat {A_BOXES[0]}, pet {A_BOXES[0]}"
    assert ex["discover"].prompt == P3 + f"cat {A_BOXES[0]}, pet {A_BOXES[0]}"
    assert "caption" not in ex  # no caption, no stage 4


def test_tags_are_cleaned_of_item_delimiters():
    item = StageItem("cat, [big] <one>", ((0.0, 0.0, 0.5, 0.5),))
    assert format_items([item], NORMALIZED, 10, 10) == "cat big one [[0.000, 0.000, 0.500, 0.500]]"
    assert format_items([], NORMALIZED, 10, 10) == "None"


# ---------------------------------------------------------------- stage-3 split


def test_split_is_deterministic_and_seeded():
    ids = [f"s{i}" for i in range(200)]
    first = [discover_split(i, 6, (0.3, 0.7), 0) for i in ids]
    assert first == [discover_split(i, 6, (0.3, 0.7), 0) for i in ids]
    assert first != [discover_split(i, 6, (0.3, 0.7), 1) for i in ids]
    assert len({tuple(m) for m in first}) > 20


def test_split_does_not_depend_on_python_hash_seed():
    code = "from pancapchain.data.stages import discover_split as d; print([d(f's{i}', 5, (0.3, 0.7), 3) for i in range(30)])"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 0, run.stderr
        outputs.add(run.stdout)
    assert len(outputs) == 1
    assert json.loads(outputs.pop().replace("True", "true").replace("False", "false"))[0] == \
        discover_split("s0", 5, (0.3, 0.7), 3)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_missing_count_stays_in_the_ratio_range(n):
    lo, hi = 0.3, 0.7
    counts = [sum(discover_split(f"id-{k}", n, (lo, hi), 0)) for k in range(600)]
    assert min(counts) >= math.floor(lo * n) and max(counts) <= math.ceil(hi * n)
    assert abs(sum(counts) / (600 * n) - 0.5) < 0.04  # E[missing fraction] = mean of the ratio range
    if n == 1:
        assert set(counts) == {0, 1}  # sometimes all known, sometimes none known


# ---------------------------------------------------------------- round trips

unit = st.floats(0.0, 1.0, allow_nan=False)
tag_words = st.text("abcdefghijklmnopqrstuvwxyz0123456789-'", min_size=1, max_size=8)


@st.composite
def boxes(draw):
    x1, x2 = sorted((draw(unit), draw(unit)))
    y1, y2 = sorted((draw(unit), draw(unit)))
    return (x1, y1, x2, y2)


@st.composite
def samples(draw):
    width, height = draw(st.integers(8, 3000)), draw(st.integers(8, 3000))
    n = draw(st.integers(0, 7))
    ents = tuple(
        Entity(i, " ".join(draw(st.lists(tag_words, min_size=1, max_size=3))), draw(boxes())) for i in range(n)
    )
    caption = " ".join(f"the {e.tag} [[{', '.join(f'{v:.3f}' for v in e.box)}]]" for e in ents) or "nothing"
    return PanopticSample(draw(st.text("abc0123", min_size=1, max_size=6)), "i.jpg", width, height, ents, caption)


def _tolerance(codec: BoxCodec, width: int, height: int) -> float:
    if codec.box_format == "normalized":
        return 0.0005 + 1e-9
    return 0.5 / 1000 * max(width, height) / min(width, height) + 1e-9


def _assert_same_items(parsed, expected, tol):
    assert [it.tag for it in parsed] == [it.tag for it in expected]
    for got, want in zip(parsed, expected):
        assert len(got.boxes) == len(want.boxes)
        for gb, wb in zip(got.boxes, want.boxes):
            assert all(abs(a - b) <= tol for a, b in zip(gb, wb)), (gb, wb)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(sample=samples(), fmt=st.sampled_from(["asmv2", "normalized"]), seed=st.integers(0, 5))
def test_built_targets_parse_back_to_the_entities(sample, fmt, seed):
    codec = BoxCodec(fmt)
    w, h = sample.width, sample.height
    tol = _tolerance(codec, w, h)
    every = [StageItem(e.tag, (e.box,)) for e in sample.entities]
    items = list(_first_by_text(every, codec, w, h).values())  # exact repeats are written once
    ex = {e.stage: e for e in build_stage_examples(sample, PROMPTS, codec, seed=seed)}
    if items:
        boxes_only = _first_by_text([StageItem(None, it.boxes) for it in items], codec, w, h)
        _assert_same_items(parse_stage_output("localize", ex["localize"].target, codec, w, h).items,
                           list(boxes_only.values()), tol)
        _assert_same_items(parse_stage_output("label", ex["label"].target, codec, w, h).items, items, tol)
        missing = discover_split(sample.id, len(items), (0.3, 0.7), seed)
        found = parse_stage_output("discover", ex["discover"].target, codec, w, h)
        known = parse_stage_output("discover", ex["discover"].prompt[len(P3):], codec, w, h)
        _assert_same_items(found.items, [it for it, m in zip(items, missing) if m], tol)
        _assert_same_items(known.items, [it for it, m in zip(items, missing) if not m], tol)
        assert found.none == (not any(missing)) and known.none == all(missing)
    caption = parse_stage_output("caption", ex["caption"].target, codec, w, h)
    # Caption boxes were written with 3 decimals before conversion: half a step more of rounding.
    _assert_same_items(caption.items, [StageItem(None, it.boxes) for it in every], tol + 0.0005)


def _first_by_text(items, codec, w, h):
    out = {}
    for it in items:
        out.setdefault(format_items([it], codec, w, h), it)
    return out


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    size=st.tuples(st.integers(8, 3000), st.integers(8, 3000)),
    fmt=st.sampled_from(["asmv2", "normalized"]),
    raw=st.lists(st.tuples(st.one_of(st.none(), tag_words), st.lists(boxes(), min_size=1, max_size=3)), max_size=6),
)
def test_format_then_parse_round_trips_multi_box_items(size, fmt, raw):
    codec, (w, h) = BoxCodec(fmt), size
    stage = "localize" if all(tag is None for tag, _ in raw) else "label"
    items = [StageItem(tag if stage == "label" else None, tuple(bxs)) for tag, bxs in raw]
    items = [it if it.tag or stage == "localize" else StageItem("thing", it.boxes) for it in items]
    parsed = parse_stage_output(stage, format_items(items, codec, w, h), codec, w, h)
    assert parsed.malformed == () and parsed.none == (not items)
    # Items that collapse onto the same text are exact duplicates after parsing.
    assert len(parsed.items) + parsed.duplicates == len(items)
    unique = {format_items([it], codec, w, h): it for it in reversed(items)}
    order = list(dict.fromkeys(format_items([it], codec, w, h) for it in items))
    _assert_same_items(parsed.items, [unique[key] for key in order], _tolerance(codec, w, h))
