"""One place that turns a stage prompt into the model's chat text (training and inference share it)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import ProcessorMixin


def stage_messages(prompt: str, system: str | None = None, image: bool = True) -> list[dict]:
    """Chat messages of one single-turn stage: (system) + user turn with the image and the prompt.

    ``system=None`` leaves the system text to the chat template's default; ``""`` asks for none.
    ``image=False``: the same turn without the image (text-only pretraining of the language model).
    """
    messages: list[dict] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    picture = [{"type": "image"}] if image else []
    messages.append({"role": "user", "content": [*picture, {"type": "text", "text": prompt}]})
    return messages


def render_prompt(processor: ProcessorMixin, prompt: str, system: str | None = None, image: bool = True) -> str:
    """The exact text fed to the model before the answer (ends with the generation prompt)."""
    return processor.apply_chat_template(stage_messages(prompt, system, image), add_generation_prompt=True,
                                         tokenize=False)


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
