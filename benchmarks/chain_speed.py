"""Chain speed: the paper's method (batch 1, image re-encoded at every stage) vs ours, side by side.

    .venv/bin/python benchmarks/chain_speed.py --model runs/demo [--images 16] [--batch-size 16]

Both run the same model on the same synthetic validation images with the same greedy settings; the script
prints images/s of each, the ratio, and whether every stage output of every image is identical.
"""

from __future__ import annotations

import argparse
import time

import torch

from pancapchain.constants import STAGES
from pancapchain.data.synth import generate_scene
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import GenerationOptions


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


def our_way(chain: PancapChain, images, options: GenerationOptions, batch_size: int) -> list[dict[str, str]]:
    outputs = []
    for start in range(0, len(images), batch_size):
        states = [ChainState(i, im) for i, im in images[start : start + batch_size]]
        outputs += [{s: record.raw for s, record in r.stages.items()} for r in chain.run(states, options)]
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="training checkpoint or export")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="synthetic image size (as trained)")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    args = parser.parse_args()
    torch.manual_seed(0)
    chain = PancapChain.from_pretrained(args.model)
    images = [(s.id, img) for s, img in (generate_scene(i, 1234, args.size, "val") for i in range(args.images))]
    options = GenerationOptions(max_new_tokens={s: args.max_new_tokens for s in STAGES})

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


if __name__ == "__main__":
    main()
