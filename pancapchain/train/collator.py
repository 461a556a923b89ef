"""Batch stage rows into model inputs: chat template, image expansion, prompt masking, right padding.

Prompt and answer are tokenized separately and concatenated by ``stage_token_ids`` (pancapchain.model.chat), the
function the dataset's ``length`` column is counted with; the prompt is expanded and tokenized as inference does
(``expand_image_tokens`` for the row's width/height), and image tokens are never truncated (the dataset drops
over-long rows before they get here). Pixels go through the processor's image processor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

from pancapchain.constants import IGNORE_INDEX, TASKS
from pancapchain.data.task_rows import CONVERSATION_TURNS
from pancapchain.mask.supervision import mask_batch
from pancapchain.model.chat import completion_text, stage_token_ids

log = logging.getLogger(__name__)


class PancapCollator:
    """Rows (dicts from ``build_stage_dataset``) -> batch dict.

    Returns:
        input_ids, attention_mask, labels: (B, L) long; labels are IGNORE_INDEX on prompt, image and padding.
        pixel_values: (B, 3, S, S) float.
        stage_ids: (B,) long, index into TASKS (the four stages, then segcap and region).
        token_stage_ids: (B, L) long, the TASKS index of the answer each label belongs to: the row's stage, or in a
            conversation row the turn's (its earlier answers are localize, then label), so per-stage losses are
            logged per turn.
        loss_weights: (B,) float, the recipe's per-stage weight.
        sample_ids: list of B "sample_id/stage" strings (named in errors).
        mask_*: with ``mask_side`` > 0, the mask-head targets (see ``pancapchain.mask.supervision``).
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        system: str | None = None,
        stage_weights: Mapping[str, float] | None = None,
        mask_side: int = 0,
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.system = system
        self.stage_weights = dict(stage_weights or {t: 1.0 for t in TASKS})
        self.mask_side = mask_side  # > 0: add mask-head targets (pancapchain.mask.supervision.mask_batch)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one before training")

    def _load_images(self, rows: Sequence[Mapping]) -> tuple[list[Mapping], list[Image.Image]]:
        kept, images = [], []
        for row in rows:
            try:
                with Image.open(row["image"]) as img:
                    images.append(img.convert("RGB"))
                kept.append(row)
            except Exception as err:  # decode failures are logged per record, the batch goes on
                log.warning("skipping %s/%s: cannot decode %s (%s)", row["sample_id"], row["stage"], row["image"], err)
        if not kept:
            names = ", ".join(f"{r['sample_id']}/{r['stage']}" for r in rows)
            raise RuntimeError(f"no decodable image in batch ({names}); run `pancapchain validate-data`")
        return kept, images

    def _token_ids(self, rows: Sequence[Mapping]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids + EOS) per row: the ids ``build_stage_dataset`` stored, else tokenized here."""
        if all("prompt_ids" in row and "answer_ids" in row for row in rows):
            return [(list(row["prompt_ids"]), list(row["answer_ids"])) for row in rows]
        return stage_token_ids(self.processor, [row["prompt"] for row in rows], [row["target"] for row in rows],
                               [(row["height"], row["width"]) for row in rows], self.system)

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        rows, images = self._load_images(rows)
        ids = self._token_ids(rows)
        sequences = [prompt + answer for prompt, answer in ids]
        # a conversation row also supervises its earlier answers (``prompt_labels``, build_stage_dataset)
        labels = [(list(row.get("prompt_labels") or ()) or [IGNORE_INDEX] * len(prompt)) + answer
                  for row, (prompt, answer) in zip(rows, ids)]
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]),
            "pixel_values": torch.as_tensor(np.stack(self.processor.image_processor(images)["pixel_values"])),
            "stage_ids": torch.tensor([TASKS.index(row["stage"]) for row in rows]),
            "token_stage_ids": torch.tensor([
                token_stages(lab, len(prompt), row["stage"], width, self.tokenizer.eos_token_id)
                for row, lab, (prompt, _) in zip(rows, labels, ids)]),
            "loss_weights": torch.tensor([float(self.stage_weights.get(row["stage"], 1.0)) for row in rows]),
            "sample_ids": [f"{row['sample_id']}/{row['stage']}" for row in rows],
        }
        if self.mask_side > 0:
            prompt_lengths = [len(prompt) for prompt, _ in ids]
            answer_texts = [completion_text(row["target"]) for row in rows]
            batch.update(mask_batch(rows, prompt_lengths, self.tokenizer, answer_texts, self.mask_side))
        return batch


def token_stages(labels: Sequence[int], n_prompt: int, stage: str, width: int, end_of_turn: int) -> list[int]:
    """The TASKS index of each of a row's ``labels`` positions, padded to ``width``: the row's ``stage``, except
    the supervised labels inside the prompt (``labels[:n_prompt]``: a conversation row's earlier answers, each
    ending with ``end_of_turn``), which belong to CONVERSATION_TURNS[k] for the k-th earlier answer."""
    out = [TASKS.index(stage)] * width
    turn = 0
    for i, label in enumerate(labels[:n_prompt]):
        if label == IGNORE_INDEX or turn >= len(CONVERSATION_TURNS) - 1:
            continue
        out[i] = TASKS.index(CONVERSATION_TURNS[turn])
        turn += label == end_of_turn
    return out
