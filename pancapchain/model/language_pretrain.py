"""Text-only pretraining of the tiny base's language model on the caption stage: the stand-in for a pretrained LLM.

A real LLaVA starts from an LLM that has read text, and so can copy from its prompt. The tiny base's language
model is random, and the chain's caption stage must copy the tags and boxes its prompt lists: measured on the
recipe's checkpoint with the ground truth given for stages 1-3 (``pancapchain infer --oracle-through
discover``), it wrote the given shape word 10% of the time under teacher forcing (chance is 12.5%) and scored
177 where direct captioning scores 204 (docs/learning_quality.md, "What the caption stage copies"). Copying
forms in a small transformer after a few thousand steps of a task that needs it; the caption rows without their
image (the item list in the prompt, the caption as the answer) are that task, and cost no image tokens.

The loop is plain torch on purpose, like :mod:`pancapchain.model.vision_pretrain`: a throwaway phase with no
checkpoints, evaluation or collation beyond padding, where the HF Trainer would add overhead and nothing else.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from pancapchain.constants import IGNORE_INDEX
from pancapchain.train.budget import WallClockBudget

WARMUP = 0.05


def pad_rows(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(prompt ids, answer ids) rows -> input_ids, attention_mask, labels, each (B, L); labels are
    ``IGNORE_INDEX`` except on the answer tokens (right padding)."""
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor(prompt + answer)
        labels[i, len(prompt) : n] = torch.tensor(answer)
        mask[i, :n] = 1
    return ids, mask, labels


def answer_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Next-token cross-entropy on the answer tokens of a text-only batch (B, L) and the answer-token accuracy.

    Runs the language model alone (``model.model.language_model`` + ``model.lm_head``): no image, no projector.
    """
    hidden = model.model.language_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
    first = int((labels != IGNORE_INDEX).float().argmax(-1).min())  # logits only from the first answer position
    logits = model.lm_head(hidden[:, max(first - 1, 0) : -1])  # (B, L', V)
    target = labels[:, max(first, 1) :]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE_INDEX)
    real = target != IGNORE_INDEX
    acc = (logits.argmax(-1)[real] == target[real]).float().mean().item()
    return loss, acc


def pretrain_language(
    model,
    rows: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    *,
    seconds: float,
    lr: float = 2e-3,
    batch_size: int = 4,
    seed: int = 0,
    max_steps: int = 0,
) -> dict:
    """Train ``model``'s language model (embeddings, layers, lm_head) in place on text-only ``rows``.

    ``rows``: (prompt ids, answer ids) without image tokens (:func:`pancapchain.model.chat.text_token_ids`).
    Runs for ``seconds`` of wall time (or ``max_steps``); warmup then cosine decay on elapsed time. Small batches:
    on CPU rows per second hardly depend on the batch size, and copying forms with optimizer steps. Returns the
    loss and answer-token accuracy averaged over the last 20 steps, the step count and seconds.
    """
    if not rows:
        raise ValueError("language pretraining needs at least one text row")
    if seconds <= 0 and max_steps <= 0:
        raise ValueError("language pretraining needs seconds > 0 or max_steps > 0")
    picker = random.Random(seed)
    torch.manual_seed(seed)
    params = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    params = list({id(p): p for p in params}.values())  # tied embeddings appear twice
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    budget = WallClockBudget(seconds if seconds > 0 else 1.0, warmup_ratio=WARMUP)
    model.model.language_model.train()
    step, recent = 0, []
    budget.started = start = time.monotonic()
    bar = tqdm(total=max_steps or int(seconds), desc="pretrain language", unit="step" if max_steps else "s")
    while (step < max_steps) if max_steps else (time.monotonic() - start < seconds):
        factor = 1.0 if max_steps else budget.lr_factor()  # a step-count run (tests) keeps the rate
        for group in optimizer.param_groups:
            group["lr"] = lr * max(factor, 1e-3)
        loss, acc = answer_loss(model, *pad_rows([picker.choice(rows) for _ in range(batch_size)], pad_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        recent = (recent + [(loss.item(), acc)])[-20:]
        bar.update(1 if max_steps else int(time.monotonic() - start) - bar.n)
    bar.close()
    model.model.language_model.eval()
    return {
        "lm_loss": round(sum(r[0] for r in recent) / len(recent), 4),
        "lm_answer_acc": round(sum(r[1] for r in recent) / len(recent), 4),
        "lm_steps": step,
        "lm_seconds": round(time.monotonic() - start, 1),
        "lm_rows": len(rows),
    }
