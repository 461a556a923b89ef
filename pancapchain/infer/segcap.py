"""Box-prompted inference: SGDiff SegCaptioning (K diverse (caption, masks) pairs) and SCA region captions.

``segcap``: the image is encoded once; each round samples K answers to the segcap prompt in one batch
(``do_sample`` with temperature/top-p; round r uses seed ``seed + r``). An answer is kept unless it is empty
or a duplicate of one already kept: the same text once lower-cased with whitespace collapsed, or a
near-duplicate, token-set Jaccard >= ``near_duplicate`` (tokens: lower-cased ``\\w+`` runs, so box numbers
count). Rounds repeat until K are kept or ``max_rounds`` is spent (then fewer are returned, with a warning).
Diverse beam search is not offered: transformers 5 moved group beam search out of the library (to a Hub
``custom_generate`` repository, which needs the network).

Masks (with a mask head): one per box group of each caption, from a teacher-forced forward over
(segcap prompt + caption), the query being the group's last token as in training.

``region``: greedy decoding of the region prompt -> a short phrase. Its mask: region answers carry no box,
so the box is grounded through the label prompt with the box (a follow-up turn after stage 1 for a checkpoint
trained with ``chain_rows: conversation``, the prompt it was trained to read), answered ``<phrase> <box>``
whatever the checkpoint's ``label_answer`` layout, teacher-forced; the query is that box group's last token.
(The tiny recipe trains the head on caption answers only; on its checkpoint this grounding still matched the GT
masks best: mean IoU 61.1 over 355 entities, against 60.3 with the answer box first and 59.2 through a
one-entity caption prompt; docs/learning_quality.md.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from PIL import Image

from pancapchain.data.boxes import BoxCodec, find_box_groups, read_user_box
from pancapchain.data.caption_parser import caption_entities, parse_caption
from pancapchain.data.schema import Box, validate_box
from pancapchain.data.stage_parse import StageItem, clean_tag
from pancapchain.infer.chain import PancapChain
from pancapchain.infer.generation import Generator

log = logging.getLogger(__name__)
_WORD_RE = re.compile(r"\w+")
_NORMALIZED = BoxCodec("normalized")


def parse_box_arg(text: str) -> Box:
    """``"x1,y1,x2,y2"`` (normalized on the original image) -> a checked box; ``BoxFormatError`` names the value."""
    return read_user_box(text, "--box")


def normalized_text(text: str) -> str:
    return " ".join(text.lower().split())


def token_set(text: str) -> frozenset[str]:
    return frozenset(_WORD_RE.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def is_duplicate(text: str, kept: Sequence[str], near_duplicate: float = 0.9) -> bool:
    """True when ``text`` equals a kept text (normalized) or its token-set Jaccard with one is >= the threshold."""
    norm, tokens = normalized_text(text), token_set(text)
    return any(norm == normalized_text(k) or jaccard(tokens, token_set(k)) >= near_duplicate for k in kept)


def box_prompt(chain: PancapChain, task: str, box: Box, width: int, height: int) -> str:
    """The task's prompt for ``box``; a clear error when the model's prompt version lacks the task."""
    chain.prompts.require([task])
    return chain.prompts.render(task, box=chain.codec.encode([box], width, height))


def sample_distinct(
    chain: PancapChain, features, prompt: str, size: tuple[int, int], k: int, generate_kwargs: dict,
    seed: int = 0, max_rounds: int = 4, near_duplicate: float = 0.9,
) -> list[tuple[str, bool]]:
    """Up to ``k`` distinct non-empty (text, truncated) answers, K sampled per round, rounds bounded."""
    generator = chain.generator
    kept: list[tuple[str, bool]] = []
    for round_index in range(max_rounds):
        if len(kept) >= k:
            break
        batch = generator.generate([prompt] * k, [size] * k, Generator.select(features, [0] * k), chain.system,
                                   generate_kwargs, seed=seed + round_index)
        for text, truncated, _ in batch:
            if len(kept) < k and text.strip() and not is_duplicate(text, [t for t, _ in kept], near_duplicate):
                kept.append((text, truncated))
    if len(kept) < k:
        log.warning("segcap: %d distinct captions after %d rounds (asked for %d)", len(kept), max_rounds, k)
    return kept


def segcap(
    chain: PancapChain, image: Image.Image, box: Sequence[float], k: int = 5, *, temperature: float = 1.0,
    top_p: float = 0.95, seed: int = 0, max_new_tokens: int = 512, max_rounds: int = 4, near_duplicate: float = 0.9,
) -> list[dict]:
    """K diverse (caption, masks) pairs centred on the entity in ``box`` (normalized xyxy on ``image``).

    Each dict: ``caption`` (normalized inline boxes), ``caption_model`` (as generated), ``truncated``,
    ``entities`` [{tag, box, box_model}] (one per distinct box, as in the chain's results) and ``masks``
    [{group, boxes, rle, score}]: one per box group of ``caption_model`` in text order (empty without a
    mask head). Raises ValueError for a bad box or k, PromptError when the model has no segcap prompt.
    """
    if k <= 0 or max_rounds <= 0:
        raise ValueError(f"k and max_rounds must be positive, got k={k}, max_rounds={max_rounds}")
    box = validate_box(list(box), "segcap", "box")
    image = image.convert("RGB")
    w, h = image.size
    prompt = box_prompt(chain, "segcap", box, w, h)
    features = chain.generator.encode([image])
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": temperature, "top_p": top_p}
    texts = sample_distinct(chain, features, prompt, (h, w), k, kwargs, seed, max_rounds, near_duplicate)
    return [_pair(chain, features, prompt, text, truncated, w, h) for text, truncated in texts]


def _pair(chain: PancapChain, features, prompt: str, raw: str, truncated: bool, w: int, h: int) -> dict:
    caption = _NORMALIZED.convert_text(raw, w, h)
    entities = [
        {"tag": tag, "box": [round(v, 4) for v in ent_box], "box_model": chain.codec.encode([ent_box], w, h)}
        for tag, ent_box in caption_entities(parse_caption(caption, w, h))
    ]
    masks = []
    if chain.masks is not None and find_box_groups(raw):
        for i, gm in enumerate(chain.masks.predict(features, 0, prompt, raw, h, w)):
            boxes = [[round(v, 4) for v in b] for b in chain.codec.decode_group(gm.group, w, h)]
            masks.append({"group": i, "boxes": boxes, "rle": gm.rle(), "score": round(gm.score, 4)})
    return {"caption": caption, "caption_model": raw, "truncated": truncated, "entities": entities, "masks": masks}


def region(
    chain: PancapChain, image: Image.Image, box: Sequence[float], *, max_new_tokens: int = 32
) -> dict:
    """A short caption of ``box`` (greedy) and, with a mask head, the mask of the entity in it.

    Returns {caption, truncated, box, box_model, mask}: ``mask`` is {rle, score} or None without a mask head.
    """
    box = validate_box(list(box), "region", "box")
    image = image.convert("RGB")
    w, h = image.size
    prompt = box_prompt(chain, "region", box, w, h)
    features = chain.generator.encode([image])
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
              "top_k": None}
    [(text, truncated, _)] = chain.generator.generate([prompt], [(h, w)], features, chain.system, kwargs)
    box_text = chain.codec.encode([box], w, h)
    result = {"caption": text, "truncated": truncated, "box": [round(v, 4) for v in box], "box_model": box_text,
              "mask": None}
    if chain.masks is not None:
        label_prompt = chain.prompt_from_items("label", {"localize": [StageItem(None, (box,))]}, w, h)
        answer = f"{clean_tag(text) or 'entity'} {box_text}"
        [gm] = chain.masks.predict(features, 0, label_prompt, answer, h, w)
        result["mask"] = {"rle": gm.rle(), "score": round(gm.score, 4)}
    return result
