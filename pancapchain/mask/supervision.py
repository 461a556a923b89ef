"""Mask supervision during training: collator tensors and the auxiliary loss (BCE + Dice + MECL).

The collator adds (only for rows whose answer grounds entities that have masks):
    mask_positions: (M, 2) long, (row, token index) of each entity's grounding token (see targets.py)
    mask_targets:   (M, S, S) float, the entity masks on the padded square the vision tower saw
    word_positions: (W, 2) long, (row, token index) of every answer token (the words MECL contrasts)
    mask_word_pairs: (P, 2) long, (mask index, word index): word w belongs to mask m's tag (MECL positives)
    mask_boxes:     (M, 4) float, each entity's box normalized on the padded square (the head's box prior)

``MaskLoss`` is a ``PancapTrainer`` auxiliary loss (:class:`pancapchain.train.aux.AuxLoss`): it reads the
language model's last hidden states (a forward hook on the final norm, registered only around each forward,
so no extra forward and no ``output_hidden_states`` copies of every layer) and the projected image features
(``outputs.image_hidden_states``), runs the mask head, and returns the weighted parts. Samples without masks
contribute only the language loss. It also saves and restores the head with training checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor

from pancapchain.config import MaskSection
from pancapchain.mask.attach import mask_head_of, restore_head_into, save_head_from
from pancapchain.mask.head import MaskHead
from pancapchain.mask.losses import dice_loss, mecl_loss, pool_mask_embeddings, sigmoid_bce_loss
from pancapchain.mask.rle import decode_rle, masks_to_square
from pancapchain.mask.targets import box_on_square, loads_targets, token_positions
from pancapchain.model.outputs import image_features_of
from pancapchain.model.states import FinalStates

MASK_BATCH_KEYS = ("mask_positions", "mask_targets", "word_positions", "mask_word_pairs", "mask_boxes")


def mask_batch(
    rows: Sequence[Mapping], prompt_lengths: Sequence[int], tokenizer, answers: Sequence[str], side: int
) -> dict[str, Tensor]:
    """Mask tensors for a batch (see the module docstring); empty tensors when no row has masks."""
    positions, targets, words, pairs, boxes = [], [], [], [], []
    for b, (row, prompt_len, answer) in enumerate(zip(rows, prompt_lengths, answers)):
        wanted = loads_targets(row.get("masks", ""))
        if not wanted:
            continue
        offsets = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        first_word = len(words)
        words.extend((b, prompt_len + i) for i in range(len(offsets)))
        shift = len(answer) - len(row["target"])  # characters prepended to the target (the leading space)
        for target, located in zip(wanted, token_positions(offsets, wanted, shift)):
            if located is None:
                continue
            end_token, tag_tokens = located
            mask = decode_rle(target.rle, f"{row['sample_id']}/{row['stage']}")
            pairs.extend((len(positions), first_word + t) for t in tag_tokens)
            positions.append((b, prompt_len + end_token))
            targets.append(masks_to_square(mask[None], side)[0])
            boxes.append(box_on_square(target.box or (0.0, 0.0, 1.0, 1.0), row["width"], row["height"]))
    return {
        "mask_positions": torch.tensor(positions, dtype=torch.long).reshape(-1, 2),
        "mask_targets": torch.stack(targets) if targets else torch.zeros((0, side, side)),
        "word_positions": torch.tensor(words, dtype=torch.long).reshape(-1, 2),
        "mask_word_pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
        "mask_boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
    }


class MaskLoss:
    """Auxiliary loss for ``PancapTrainer``: weighted BCE + Dice on every grounded entity, plus MECL.

    Built from the recipe's ``mask`` section (weights ``bce_weight``, ``dice_weight``, ``mecl_weight``,
    temperatures ``tau``, ``tau_g``) for a model with the head attached.
    """

    batch_keys = MASK_BATCH_KEYS

    def __init__(self, model: torch.nn.Module, section: MaskSection):
        head = mask_head_of(model)
        if head is None:
            raise ValueError("MaskLoss needs a model with a MaskHead attached (model.mask_head)")
        self.head: MaskHead = head
        self.weights = {"bce": section.bce_weight, "dice": section.dice_weight, "mecl": section.mecl_weight}
        self.tau, self.tau_g = section.tau, section.tau_g
        self.final_states = FinalStates(model)

    def capture(self) -> AbstractContextManager:
        return self.final_states.capture()

    def save(self, output_dir: str | Path, state_dict: dict | None = None) -> None:
        save_head_from(self.head, output_dir, state_dict)

    def restore(self, checkpoint_dir: str | Path) -> None:
        restore_head_into(self.head, checkpoint_dir)

    def __call__(self, outputs, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        states = self.final_states.take()
        if "mask_positions" not in batch or states is None:
            return {}
        positions = batch["mask_positions"]
        # The head runs only on the rows that ground a mask (stage rows other than the caption's have none):
        # a row without masks adds nothing to BCE, Dice or MECL, and its pixel decoding was a quarter of a tiny
        # chain's step. Without any such row the parts are a zero that keeps every head weight in the graph (DDP).
        rows = positions[:, 0].unique()
        if len(rows) == 0:
            zero = self.head.graph_anchor()
            return {"mask_bce": zero, "mask_dice": zero, **({"mecl": zero} if self._uses_mecl() else {})}
        image = image_features_of(outputs, states.shape[0])[rows]
        per_row = [states[b, positions[positions[:, 0] == b, 1]] for b in rows.tolist()]
        boxes = [batch["mask_boxes"][positions[:, 0] == b] for b in rows.tolist()] if "mask_boxes" in batch else None
        pixels = batch["pixel_values"][rows] if self.head.cfg.pixel_skip else None
        feats, logits = self.head.forward_features(image, per_row, boxes, pixels)
        all_logits = torch.cat(logits)
        target = batch["mask_targets"].to(all_logits.dtype)
        parts = {
            "mask_bce": self.weights["bce"] * sigmoid_bce_loss(all_logits, target),
            "mask_dice": self.weights["dice"] * dice_loss(all_logits, target),
        }
        if self._uses_mecl():
            parts["mecl"] = self.weights["mecl"] * self._mecl(states, feats, logits, rows, batch)
        return parts

    def _uses_mecl(self) -> bool:
        return self.weights["mecl"] > 0 and self.head.word_proj is not None

    def _mecl(self, states: Tensor, feats: Tensor, logits: list[Tensor], rows: Tensor,
              batch: Mapping[str, Tensor]) -> Tensor:
        """MECL over the rows with masks: ``feats`` (R, D, S, S) and ``logits[i]`` belong to batch row ``rows[i]``."""
        words, pairs, positions = batch["word_positions"], batch["mask_word_pairs"], batch["mask_positions"]
        word_embeds = self.head.word_embeddings(states[words[:, 0], words[:, 1]])
        mask_embeds, row_words, positives = [], [], []
        mask_offset = 0
        for i, (b, row_logits) in enumerate(zip(rows.tolist(), logits)):
            k = row_logits.shape[0]
            word_idx = (words[:, 0] == b).nonzero().flatten()
            pos = torch.zeros((k, len(word_idx)), dtype=torch.bool, device=states.device)
            in_row = (pairs[:, 0] >= mask_offset) & (pairs[:, 0] < mask_offset + k)
            if len(word_idx):
                pos[pairs[in_row, 0] - mask_offset, pairs[in_row, 1] - word_idx[0]] = True
            mask_embeds.append(pool_mask_embeddings(feats[i], row_logits))
            row_words.append(word_embeds[word_idx])
            positives.append(pos)
            mask_offset += k
        assert mask_offset == positions.shape[0]
        return mecl_loss(mask_embeds, row_words, positives, self.tau, self.tau_g)["mecl"]
