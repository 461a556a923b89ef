"""Chain speed: the paper's method (batch 1, image re-encoded at every stage) vs ours, side by side.

    .venv/bin/python benchmarks/chain_speed.py --model runs/demo [--images 16] [--batch-size 16]
        [--localize-views 9 --localize-mirror --localize-view-batch 6 [--localize-mask-boxes]]

Both run the same model on the same synthetic validation images with the same greedy settings; the script
prints images/s of each, the ratio, and whether every stage output of every image is identical. With stage-1
views it also times ours with one view per generate call against --localize-view-batch views per call, and with
--localize-mask-boxes (a checkpoint whose mask head was trained on stage-1 answers) the masks of stage-1 views read
one answer per forward against one forward per generate call.
"""

from __future__ import annotations

import argparse
import time

import torch

from pancapchain.constants import STAGES
from pancapchain.data.synth import generate_scene
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import GenerationOptions
from pancapchain.infer.views import total_views


def paper_way(chain: PancapChain, images, options: GenerationOptions) -> list[dict[str, str]]:
    """One image at a time; every stage passes pixels, so the vision tower runs 4x per image."""
    outputs = []
    for image_id, image in images:
        state = ChainState(image_id, image)
        for stage in STAGES:
            prompt = chain.stage_prompt(stage, state)
            text, truncated = chain.generator.generate_reencoding(prompt, image, chain.system, options.for_stage(stage))
            chain.set_output(state, stage, text, prompt, truncated)
        outputs.append({s: o.raw for s, o in state.outputs.items()})
    return outputs


def our_way(chain: PancapChain, images, options: GenerationOptions, batch_size: int,
            timings: dict[str, float] | None = None) -> list[dict[str, str]]:
    outputs = []
    for start in range(0, len(images), batch_size):
        states = [ChainState(i, im) for i, im in images[start : start + batch_size]]
        outputs += [{s: record.raw for s, record in r.stages.items()} for r in chain.run(states, options, timings=timings)]
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="training checkpoint or export")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="synthetic image size (as trained)")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--localize-views", type=int, default=1, help="stage-1 views (as pancapchain infer)")
    parser.add_argument("--localize-mirror", action="store_true")
    parser.add_argument("--localize-view-batch", type=int, default=6, help="views per generate call, timed "
                        "against one (with views only)")
    parser.add_argument("--localize-mask-boxes", action="store_true", help="also time stage-1 mask boxes: one "
                        "answer per mask forward vs one forward per generate call (with views only)")
    args = parser.parse_args()
    torch.manual_seed(0)
    chain = PancapChain.from_pretrained(args.model)
    images = [(s.id, img) for s, img in (generate_scene(i, 1234, args.size, "val") for i in range(args.images))]
    # plain greedy decoding, as the paper's way decodes (no given-box constraint, loop steering or re-find filter)
    options = GenerationOptions(max_new_tokens={s: args.max_new_tokens for s in STAGES}, stop_on_repeat=False,
                                given_boxes=False, ordered_boxes=(), no_repeat_ngram=0, named_references=False,
                                refind_iou=0.0, late_boxes=False)

    our_way(chain, images[:2], options, 2)  # warm-up (allocator, kernels), not timed
    started = time.perf_counter()
    reference = paper_way(chain, images, options)
    paper_s = time.perf_counter() - started
    started = time.perf_counter()
    ours = our_way(chain, images, options, args.batch_size)
    ours_s = time.perf_counter() - started

    same = [a == b for a, b in zip(reference, ours)]
    print(f"images: {len(images)}, model: {args.model}, threads: {torch.get_num_threads()}")
    print(f"paper (batch 1, re-encode per stage): {paper_s:7.2f} s  {len(images) / paper_s:6.2f} images/s")
    print(f"ours  (batch {args.batch_size}, features once):      {ours_s:7.2f} s  {len(images) / ours_s:6.2f} images/s")
    print(f"speed-up: {paper_s / ours_s:.2f}x   identical outputs: {all(same)} ({sum(same)}/{len(same)} images)")
    if not all(same):
        first = same.index(False)
        diff = [s for s in STAGES if reference[first].get(s) != ours[first].get(s)]
        print(f"first difference: image {images[first][0]}, stages {diff}")
    if args.localize_views > 1 or args.localize_mirror:
        compare_view_batches(chain, images, args)
        if args.localize_mask_boxes:
            compare_mask_batches(chain, images, args)


def compare_view_batches(chain: PancapChain, images, args) -> None:
    """Ours with the protocol's decoding and stage 1 on views (votes: a majority): one view of every image per
    generate call vs --localize-view-batch views per call; whole chain and stage 1 alone."""
    seconds, stage1, outputs = {}, {}, {}
    many = args.localize_view_batch
    majority = total_views(args.localize_views, args.localize_mirror) // 2 + 1
    for per_call in (1, many):
        options = GenerationOptions(localize_views=args.localize_views, localize_mirror=args.localize_mirror,
                                    localize_votes=majority, localize_view_batch=per_call)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        outputs[per_call] = our_way(chain, images, options, args.batch_size, timings)
        seconds[per_call], stage1[per_call] = time.perf_counter() - started, timings["localize"]
    same = sum(a == b for a, b in zip(outputs[1], outputs[many]))
    for per_call in (1, many):
        print(f"{options.total_views} views, {per_call} per call: {seconds[per_call]:7.2f} s "
              f"({len(images) / seconds[per_call]:6.2f} images/s), stage 1 {stage1[per_call]:6.2f} s")
    print(f"speed-up: chain {seconds[1] / seconds[many]:.2f}x, stage 1 {stage1[1] / stage1[many]:.2f}x   "
          f"identical outputs: {same == len(images)} ({same}/{len(images)} images)")


def compare_mask_batches(chain: PancapChain, images, args) -> None:
    """Stage 1 on views with each view's boxes read off its masks: the masks of one answer per teacher-forced
    forward (as before the batched predictor) vs every answer of a generate call in one forward."""
    batched = chain.masks.predict_many

    def one_at_a_time(features, requests):
        return [batched(features, [request])[0] for request in requests]

    majority = total_views(args.localize_views, args.localize_mirror) // 2 + 1
    options = GenerationOptions(localize_views=args.localize_views, localize_mirror=args.localize_mirror,
                                localize_votes=majority, localize_view_batch=args.localize_view_batch,
                                localize_mask_boxes=True)
    seconds, stage1, outputs = {}, {}, {}
    for name, predict_many in (("one answer per forward", one_at_a_time), ("one forward per call", batched)):
        chain.masks.predict_many = predict_many
        timings: dict[str, float] = {}
        started = time.perf_counter()
        outputs[name] = our_way(chain, images, options, args.batch_size, timings)
        seconds[name], stage1[name] = time.perf_counter() - started, timings["localize"]
        print(f"mask boxes, {name}: {seconds[name]:7.2f} s ({len(images) / seconds[name]:6.2f} images/s), "
              f"stage 1 {stage1[name]:6.2f} s")
    chain.masks.predict_many = batched
    (slow, fast), (slow_stage1, fast_stage1) = seconds.values(), stage1.values()
    same = sum(a == b for a, b in zip(*outputs.values()))
    print(f"speed-up: chain {slow / fast:.2f}x, stage 1 {slow_stage1 / fast_stage1:.2f}x   "
          f"identical outputs: {same == len(images)} ({same}/{len(images)} images)")


if __name__ == "__main__":
    main()
