"""Batched generation with pre-computed image features (transformers' ``mm_encoder_outputs``).

``Generator.encode`` runs the vision tower + projector once; ``Generator.generate`` feeds those features to
``model.generate`` for any number of stage prompts, left-padded, so nothing is re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from pancapchain.constants import STAGES
from pancapchain.model.chat import expand_image_tokens, render_prompt
from pancapchain.model.outputs import per_image_features

# Per-stage generation budgets: boxes-only and tagged lists are short; captions are long.
DEFAULT_MAX_NEW_TOKENS = {"localize": 512, "label": 768, "discover": 512, "caption": 1024}


@dataclass
class GenerationOptions:
    """Decoding settings of the chain. Greedy by default (the paper's ``temperature 0``)."""

    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop_after: str | None = None  # a stage name: stop the chain after it

    def __post_init__(self) -> None:
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ValueError(f"stop_after={self.stop_after!r}: choose one of {STAGES}")
        unknown = set(self.max_new_tokens) - set(STAGES)
        if unknown:
            raise ValueError(f"max_new_tokens has unknown stages {sorted(unknown)}")

    def for_stage(self, stage: str) -> dict:
        kwargs: dict = {"max_new_tokens": self.max_new_tokens.get(stage, DEFAULT_MAX_NEW_TOKENS[stage])}
        if self.do_sample:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


class Generator:
    """Wraps a llava-hf model (or its peft wrapper) and processor for feature reuse and batched decoding."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.seed = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> BaseModelOutputWithPooling:
        """Image features for ``images``: ``pooler_output`` is a list of (N_image_tokens, D) tensors."""
        pixels = self.processor.image_processor([img.convert("RGB") for img in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device, dtype=self.model.dtype)
        out = self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return BaseModelOutputWithPooling(pooler_output=per_image_features(out.pooler_output, len(images)))

    @staticmethod
    def select(features: BaseModelOutputWithPooling, indices: Sequence[int]) -> BaseModelOutputWithPooling:
        """The features of a subset of the encoded images, in ``indices`` order."""
        return BaseModelOutputWithPooling(pooler_output=[features.pooler_output[i] for i in indices])

    def tokenize(self, prompts: Sequence[str], sizes: Sequence[tuple[int, int]], system: str | None):
        """Left-padded ``input_ids``/``attention_mask`` of chat-rendered prompts with expanded image tokens."""
        texts = [
            expand_image_tokens(self.processor, render_prompt(self.processor, p, system), h, w)
            for p, (h, w) in zip(prompts, sizes)
        ]
        self.tokenizer.padding_side = "left"  # generation appends on the right; pads must not sit between
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        features: BaseModelOutputWithPooling,
        system: str | None,
        generate_kwargs: dict,
    ) -> list[tuple[str, bool]]:
        """Decode one answer per prompt; returns (text, truncated) where truncated = hit max_new_tokens."""
        input_ids, attention_mask = self.tokenize(prompts, sizes, system)
        if generate_kwargs.get("do_sample"):
            torch.manual_seed(self.seed)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_encoder_outputs={"image": features},
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **generate_kwargs,
        )
        new_tokens = out[:, input_ids.shape[1] :]
        results = []
        for row in new_tokens:
            ended = bool((row == self.tokenizer.eos_token_id).any())
            text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
            results.append((text, not ended and len(row) >= generate_kwargs["max_new_tokens"]))
        return results

    @torch.no_grad()
    def generate_reencoding(
        self, prompt: str, image: Image.Image, system: str | None, generate_kwargs: dict
    ) -> tuple[str, bool]:
        """The paper's way (reference for tests/benchmarks): one image, pixels passed and encoded at this call."""
        text = render_prompt(self.processor, prompt, system)
        enc = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(self.device)
        out = self.model.generate(
            **enc, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            **generate_kwargs,
        )
        row = out[0, enc["input_ids"].shape[1] :]
        ended = bool((row == self.tokenizer.eos_token_id).any())
        return self.tokenizer.decode(row, skip_special_tokens=True).strip(), (
            not ended and len(row) >= generate_kwargs["max_new_tokens"]
        )
