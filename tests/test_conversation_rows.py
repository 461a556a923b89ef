"""data.chain_rows=conversation: one three-turn row per scene, and the chain asking the same turns at inference."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import write_synth_scenes

from pancapchain.config import ConfigError, TinyModelConfig, load_recipe
from pancapchain.constants import IGNORE_INDEX, STAGES, TASKS
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prompts import PromptError, load_prompts
from pancapchain.data.stage_parse import StageItem, format_items
from pancapchain.data.stage_prompt import box_only, conversation_prompt
from pancapchain.data.stages import build_stage_examples, entity_items
from pancapchain.data.synth import generate_scene
from pancapchain.data.task_rows import as_conversation
from pancapchain.model.chat import FollowUp, prompt_labels, render_prompt, stage_token_ids
from pancapchain.model.tiny import build_processor, build_tokenizer
from pancapchain.train.collator import PancapCollator
from pancapchain.train.dataset import build_stage_dataset, collect_stage_examples

SYSTEM = "A chat between a curious user and an artificial intelligence assistant."
CFG = TinyModelConfig(image_size=32, patch_size=8)  # 16 image tokens


def _processor():
    prompts = load_prompts()
    texts = [SYSTEM, *(p.template for p in prompts.stages.values()), prompts.followup("label"),
             prompts.followup("caption"), "red square blue square <box><loc_1><loc_2></box> None"]
    return build_processor(build_tokenizer(texts * 10, vocab_size=400, loc_tokens=True), CFG)


def _scenes(root: Path, n: int) -> Path:
    return write_synth_scenes(root, n, seed=5)


def test_followups_load_and_a_version_without_one_is_named(tmp_path: Path):
    prompts = load_prompts()
    assert "{" not in prompts.followup("label") and "{" not in prompts.followup("caption")
    with pytest.raises(PromptError, match="no followup for 'localize'"):
        prompts.followup("localize")
    version = tmp_path / "v9"
    version.mkdir()
    for f in Path(prompts_dir := Path(__file__).resolve().parents[1] / "prompts" / "v1").glob("*.yaml"):
        data = yaml.safe_load(f.read_text())
        data["version"] = "v9"
        data.pop("followup", None)
        (version / f.name).write_text(yaml.safe_dump(data))
    bare = load_prompts("v9", tmp_path)
    with pytest.raises(PromptError, match="data.chain_rows=conversation needs one"):
        bare.followup("label")
    label = yaml.safe_load((prompts_dir / "label.yaml").read_text())
    (version / "label.yaml").write_text(yaml.safe_dump({**label, "version": "v9", "followup": "Tag {boxes}."}))
    with pytest.raises(PromptError, match="followup takes no placeholder"):
        load_prompts("v9", tmp_path)


def test_a_scene_becomes_one_caption_row_of_three_turns(tmp_path: Path):
    train = _scenes(tmp_path / "data", 12)
    prompts, codec = load_prompts(), BoxCodec("bins")
    single, _ = collect_stage_examples(train, None, prompts, codec, stages=STAGES)
    joined, report = collect_stage_examples(train, None, prompts, codec, stages=STAGES, chain_rows="conversation")
    assert report.kept == 12
    assert Counter(ex.stage for ex, *_ in joined) == {"caption": 12, "discover": 12}
    by_id = {(ex.sample_id, ex.stage): ex for ex, *_ in single}
    for ex, *_ in joined:
        if ex.stage == "discover":
            assert ex == by_id[(ex.sample_id, "discover")]  # stage 3 stays its own single-turn row
            continue
        assert isinstance(ex.prompt, FollowUp) and str(ex.prompt) == prompts.followup("caption")
        assert ex.target == by_id[(ex.sample_id, "caption")].target
        loc, lab = by_id[(ex.sample_id, "localize")], by_id[(ex.sample_id, "label")]
        assert ex.prompt.history == ((loc.prompt, loc.target), (prompts.followup("label"), lab.target))


def test_a_scene_without_entities_keeps_its_single_turn_caption():
    sample, _ = generate_scene(0, seed=5, size=64)
    empty = sample.__class__(**{**sample.__dict__, "entities": []})
    examples = build_stage_examples(empty, load_prompts(), BoxCodec("bins"), STAGES)
    assert [ex.stage for ex in examples] == ["caption"]
    assert as_conversation(examples, load_prompts()) == examples


def test_earlier_answers_are_supervised_with_their_end_of_turn():
    proc, prompts = _processor(), load_prompts()
    tok = proc.tokenizer
    answers = ("<box><loc_1><loc_2><loc_3><loc_4></box>", "<box><loc_1><loc_2><loc_3><loc_4></box> red square")
    prompt = FollowUp(prompts.followup("caption"), [(prompts.render("localize"), answers[0]),
                                                    (prompts.followup("label"), answers[1])])
    [(prompt_ids, answer_ids)] = stage_token_ids(proc, [prompt], ["a red square."], [(32, 48)], SYSTEM)
    labels = prompt_labels(proc, prompt, SYSTEM, 32, 48, prompt_ids, IGNORE_INDEX)
    assert len(labels) == len(prompt_ids)
    # the supervised tokens are exactly each answer as a single-turn answer is tokenized (" " + text) + EOS
    expected = []
    for text in answers:
        expected += tok(" " + text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [t for t in labels if t != IGNORE_INDEX] == expected
    text = render_prompt(proc, prompt, SYSTEM)
    assert text.count("<image>") == 1 and text.endswith(prompts.followup("caption") + " ASSISTANT:")
    assert prompt_labels(proc, "single turn", SYSTEM, 32, 48, [1, 2, 3], IGNORE_INDEX) == [IGNORE_INDEX] * 3


def test_the_collator_supervises_a_conversation_row_end_to_end(tmp_path: Path):
    train = _scenes(tmp_path / "data", 3)
    proc, prompts, codec = _processor(), load_prompts(), BoxCodec("bins")
    pairs, report = collect_stage_examples(train, None, prompts, codec, stages=("localize", "label", "caption"),
                                           chain_rows="conversation")
    ds = build_stage_dataset(pairs, proc, SYSTEM, 2048, report)
    assert len(ds) == 3 and set(ds["stage"]) == {"caption"}
    row = ds[0]
    batch = PancapCollator(proc, SYSTEM)([row])
    labels = batch["labels"][0].tolist()
    n_prompt = len(row["prompt_ids"])
    assert labels[n_prompt:] == list(row["answer_ids"])
    supervised = [t for t in labels[:n_prompt] if t != IGNORE_INDEX]
    assert supervised.count(proc.tokenizer.eos_token_id) == 2  # the stage-1 and stage-2 answers end their turns
    assert len(supervised) > 2 and labels[:n_prompt] == list(row["prompt_labels"])
    # each supervised token is logged under its own turn's stage: localize's answer, label's, then the caption
    stages = batch["token_stage_ids"][0].tolist()
    turns = [TASKS[stage] for stage, label in zip(stages, labels, strict=True) if label != IGNORE_INDEX]
    eos_at = [i for i, t in enumerate(label for label in labels if label != IGNORE_INDEX)
              if t == proc.tokenizer.eos_token_id]
    assert turns == (["localize"] * (eos_at[0] + 1) + ["label"] * (eos_at[1] - eos_at[0])
                     + ["caption"] * (len(turns) - eos_at[1] - 1))


def test_inference_asks_the_turns_training_wrote(tmp_path: Path):
    """The chain's label and caption turns, built from the ground-truth items, render to the training row's text."""
    sample, _ = generate_scene(3, seed=5, size=64)
    prompts, codec, proc = load_prompts(), BoxCodec("bins"), _processor()
    examples = build_stage_examples(sample, prompts, codec, ("localize", "label", "caption"),
                                    label_answer="box_first")
    [row] = as_conversation(examples, prompts)
    items = entity_items(sample)
    w, h = sample.width, sample.height
    asked = conversation_prompt(prompts, "caption", {"label": items}, codec=codec, width=w, height=h,
                                label_box_first=True)
    assert render_prompt(proc, asked, SYSTEM) == render_prompt(proc, row.prompt, SYSTEM)
    label_turn = conversation_prompt(prompts, "label", {"localize": box_only(items)}, codec=codec, width=w, height=h)
    assert label_turn.history == (row.prompt.history[0],)
    finds = [StageItem("blue square", ((0.1, 0.1, 0.3, 0.3),))]
    merged = conversation_prompt(prompts, "caption", {"label": items, "discover": finds}, codec=codec, width=w,
                                 height=h)
    assert merged.history[0][1] == format_items(box_only(items + finds), codec, w, h)  # stage-3 finds join both lists
    with pytest.raises(ValueError, match="not a later turn"):
        conversation_prompt(prompts, "discover", {}, codec=codec, width=w, height=h)


def test_contradictory_settings_fail_at_start():
    with pytest.raises(ConfigError, match="one equal weight in data.stages"):
        load_recipe("recipes/tiny_chain.yaml", ["data.chain_rows=conversation", "data.stages.label=2"])
    with pytest.raises(ConfigError, match=r"unset their data.stage_rates \['caption'\]"):
        load_recipe("recipes/tiny_chain.yaml", ["data.chain_rows=conversation", "data.stage_rates.caption=2"])
    with pytest.raises(ConfigError, match="chain_rows must be one of"):
        load_recipe("recipes/tiny_chain.yaml", ["data.chain_rows=turns"])
    assert load_recipe("recipes/tiny_chain.yaml", ["data.chain_rows=conversation"]).data.chain_rows == "conversation"
    direct = ["data.stages.localize=0", "data.stages.label=0", "data.stages.discover=0", "data.stage_rates.discover=null",
              "data.stages.caption=0", "data.stages.direct=1", "data.chain_rows=conversation"]
    assert load_recipe("recipes/tiny_chain.yaml", direct).data.stages["direct"] == 1.0  # no chain stage to join


def test_a_conversation_checkpoint_chains_follow_up_turns_like_the_reencoding_reference(tmp_path: Path, one_thread):
    """Trained with conversation rows, the checkpoint says so; the chain asks label and caption as later turns, and
    its batched answers (features reused) equal the paper's way (pixels re-encoded, the same rendered turns)."""
    from conftest import tiny_overrides, write_dataset
    from PIL import Image

    from pancapchain.infer.chain import ChainState, PancapChain
    from pancapchain.infer.generation import GenerationOptions
    from pancapchain.train.run import run_training

    train = write_dataset(tmp_path / "data", n=4)
    out = tmp_path / "run"
    run_training(load_recipe(None, tiny_overrides(train, out, **{"train.max_steps": "2",
                                                                 "data.chain_rows": "conversation"})))
    assert json.loads((out / "pancap_meta.json").read_text())["chain_rows"] == "conversation"
    # the rows are caption and discover rows, yet every turn's loss is logged under its own stage
    steps = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"][:2]
    assert all({"loss_localize", "loss_label", "loss_caption"} <= set(step) for step in steps)
    chain, prompts = PancapChain.from_pretrained(str(out)), load_prompts()
    image = Image.open(train.parent / "images" / "s0.png").convert("RGB")
    options = GenerationOptions(max_new_tokens={s: 10 for s in STAGES}, no_repeat_ngram=0, refind_iou=0.0)
    given = "<box>[[100, 200, 500, 500]]</box>, <box>[[550, 300, 900, 800]]</box>"
    state = ChainState("s0", image)
    chain.run([state], options, given=[{"localize": given}])
    label, caption = state.outputs["label"].prompt, state.outputs["caption"].prompt
    assert label == prompts.followup("label") and label.history == ((prompts.render("localize"), given),)
    assert caption == prompts.followup("caption") and [u for u, _ in caption.history] == [
        prompts.render("localize"), prompts.followup("label")]
    reference = ChainState("s0", image)
    chain.set_output(reference, "localize", given, prompts.render("localize"), edited=True)
    for stage in ("label", "discover", "caption"):
        prompt = chain.stage_prompt(stage, reference)
        text, truncated = chain.generator.generate_reencoding(prompt, image, chain.system, options.for_stage(stage))
        chain.set_output(reference, stage, text, prompt, truncated)
    assert {s: o.raw for s, o in reference.outputs.items()} == {s: o.raw for s, o in state.outputs.items()}

    # a region's mask is grounded through the label turn as this checkpoint was trained to answer it: a follow-up
    from types import SimpleNamespace

    from pancapchain.infer.segcap import region

    asked = []
    chain.masks = SimpleNamespace(predict=lambda features, index, prompt, answer, h, w: asked.append(prompt) or [
        SimpleNamespace(rle=lambda: {"size": [h, w], "counts": ""}, score=0.5)])
    region(chain, image, [0.1, 0.2, 0.5, 0.5], max_new_tokens=4)
    box_text = chain.codec.encode([[0.1, 0.2, 0.5, 0.5]], *image.size)
    assert asked == [prompts.followup("label")] and asked[0].history == ((prompts.render("localize"), box_text),)
