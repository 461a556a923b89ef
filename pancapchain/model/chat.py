"""One place that turns a stage prompt into the model's chat text (training and inference share it)."""

from __future__ import annotations

from transformers import ProcessorMixin


def stage_messages(prompt: str, system: str | None = None) -> list[dict]:
    """Chat messages of one single-turn stage: (optional system) + user turn with the image and the prompt."""
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
    return messages


def render_prompt(processor: ProcessorMixin, prompt: str, system: str | None = None) -> str:
    """The exact text fed to the model before the answer (ends with the generation prompt)."""
    return processor.apply_chat_template(stage_messages(prompt, system), add_generation_prompt=True, tokenize=False)


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
