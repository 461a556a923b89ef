"""One place that turns a stage prompt into the model's chat text (training and inference share it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: recipe validation imports FollowUp without loading transformers
    from transformers import ProcessorMixin


class FollowUp(str):
    """A stage's user text asked after earlier turns of one conversation (``data.chain_rows: conversation``).

    It is the turn's own text (what prediction records store and the chat shows) and carries ``history``, the
    (user text, assistant answer) turns before it; the first user turn holds the image. A plain str prompt is a
    single-turn stage. Every renderer (:func:`stage_messages`) reads the history, so the stage plumbing passes
    prompts along unchanged. (A str subclass, not a new parameter through every generate/mask call: those only
    pass the prompt on.)
    """

    history: tuple[tuple[str, str], ...]

    def __new__(cls, text: str, history: Sequence[tuple[str, str]]):
        obj = super().__new__(cls, text)
        obj.history = tuple((str(user), str(answer)) for user, answer in history)
        return obj


def history_of(prompt: str) -> tuple[tuple[str, str], ...]:
    """The earlier turns of ``prompt`` (empty for a single-turn stage prompt)."""
    return getattr(prompt, "history", ())


def stage_messages(prompt: str, system: str | None = None, image: bool = True) -> list[dict]:
    """Chat messages of one stage: (system) + the earlier turns of a :class:`FollowUp` + the user turn.

    The image goes into the first user turn. ``system=None`` leaves the system text to the chat template's
    default; ``""`` asks for none. ``image=False``: no image (text-only pretraining of the language model).
    """
    messages: list[dict] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    turns = [*history_of(prompt), (str(prompt), None)]
    for i, (user, answer) in enumerate(turns):
        picture = [{"type": "image"}] if image and i == 0 else []
        messages.append({"role": "user", "content": [*picture, {"type": "text", "text": user}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_prompt(processor: ProcessorMixin, prompt: str, system: str | None = None, image: bool = True) -> str:
    """The exact text fed to the model before the answer (ends with the generation prompt)."""
    return processor.apply_chat_template(stage_messages(prompt, system, image), add_generation_prompt=True,
                                         tokenize=False)


def history_answer_spans(processor: ProcessorMixin, prompt: str, system: str | None, height: int,
                         width: int) -> list[tuple[int, int]]:
    """Character spans [start, end) of the earlier answers (each with its end-of-turn text) in the expanded
    :func:`render_prompt` text of ``prompt``. Each span is found by rendering the conversation up to that answer;
    raises ValueError when the chat template does not render a conversation as a prefix of its continuation."""
    turns, spans = history_of(prompt), []
    full = expand_image_tokens(processor, render_prompt(processor, prompt, system), height, width)
    for k, (user, _) in enumerate(turns):
        asked = FollowUp(user, turns[:k])
        start = len(expand_image_tokens(processor, render_prompt(processor, asked, system), height, width))
        messages = stage_messages(asked, system)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turns[k][1]}]})
        answered = expand_image_tokens(processor, processor.apply_chat_template(messages, tokenize=False), height,
                                       width)
        if not full.startswith(answered):
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
        spans.append((start, len(answered)))
    return spans


def completion_text(target: str) -> str:
    """The supervised answer text; the leading space matches the template's ``ASSISTANT: <answer>`` turn."""
    return " " + target


def image_token_count(processor: ProcessorMixin, height: int, width: int) -> int:
    """How many image tokens the processor expands ``<image>`` into for an image of this size."""
    return int(processor._get_num_multimodal_tokens(image_sizes=[[height, width]]).num_image_tokens[0])


def expand_image_tokens(processor: ProcessorMixin, text: str, height: int, width: int) -> str:
    """``<image>`` -> N image tokens, as the processor does, without touching pixels (features are reused)."""
    token = processor.image_token
    return text.replace(token, token * image_token_count(processor, height, width))


def stage_token_ids(
    processor: ProcessorMixin,
    prompts: Sequence[str],
    targets: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    system: str | None = None,
) -> list[tuple[list[int], list[int]]]:
    """The one tokenization of stage examples: per example (prompt ids, answer ids + EOS).

    Prompt ids are the chat-rendered prompt with ``<image>`` expanded for the image's (height, width) in
    ``sizes``, as inference feeds it; the collator's input_ids are prompt + answer and the dataset's ``length``
    column is their total length, so the two cannot disagree.
    """
    texts = [expand_image_tokens(processor, render_prompt(processor, p, system), h, w)
             for p, (h, w) in zip(prompts, sizes)]
    return _prompt_answer_ids(processor, texts, targets)


def prompt_labels(processor: ProcessorMixin, prompt: str, system: str | None, height: int, width: int,
                  prompt_ids: Sequence[int], ignore: int) -> list[int]:
    """Per prompt token, its id where it belongs to an earlier answer of a :class:`FollowUp` (supervised as
    that turn's answer: its text and end-of-turn token), else ``ignore``; all ``ignore`` for a single turn.
    ``prompt_ids`` are the tokenizer's ids of the expanded rendered prompt (:func:`stage_token_ids`)."""
    labels = [ignore] * len(prompt_ids)
    if not history_of(prompt):
        return labels
    text = expand_image_tokens(processor, render_prompt(processor, prompt, system), height, width)
    offsets = processor.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) != len(prompt_ids):
        raise ValueError(f"prompt tokenized to {len(offsets)} tokens, expected {len(prompt_ids)}")
    # a span starts where the generation prompt ends, so it holds the space before the answer: as in the
    # single-turn answer ids (" " + target), the token with that space is the answer's first
    spans = history_answer_spans(processor, prompt, system, height, width)
    for i, (a, b) in enumerate(offsets):
        if b > a and any(a < end and b > start for start, end in spans):
            labels[i] = prompt_ids[i]
    return labels


def text_token_ids(
    processor: ProcessorMixin, prompts: Sequence[str], targets: Sequence[str], system: str | None = None
) -> list[tuple[list[int], list[int]]]:
    """:func:`stage_token_ids` without the image: the same chat turn and answer ids, no image token."""
    return _prompt_answer_ids(processor, [render_prompt(processor, p, system, image=False) for p in prompts], targets)


def _prompt_answer_ids(
    processor: ProcessorMixin, texts: Sequence[str], targets: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """Rendered prompt texts + answers -> (prompt ids, answer ids + EOS) per example."""
    tok = processor.tokenizer
    prompt_ids = tok(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    answer_ids = tok([completion_text(t) for t in targets], add_special_tokens=False)["input_ids"] if targets else []
    return [(list(p), [*a, tok.eos_token_id]) for p, a in zip(prompt_ids, answer_ids)]
