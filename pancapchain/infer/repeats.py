"""Stop a generation that has started to loop, instead of letting it run to ``max_new_tokens``.

Under greedy decoding a repeated item or sentence is a loop the model never leaves: every further token is
wasted and the answer ends up cut. Two rules, checked per row after each token:

* item lists (stages 1-3): the item just closed by ``</box>`` repeats an earlier item of the same answer
  (the stage parser drops exact repeats anyway, so stopping there loses nothing);
* captions: the last ``ngram`` tokens already occurred as one run earlier in the answer.

A row stopped this way is reported as ``repeat_stopped``, not as cut at max tokens.

Captions are first steered away from loops (``NoRepeatText``, a logits processor): ending a caption at its
first loop lost every entity after it, so the stop above is only the last resort there.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, StoppingCriteria


class RepeatStop(StoppingCriteria):
    """Per-row stop signal for looping answers. ``prompt_len`` = input length (answers start after it)."""

    def __init__(self, prompt_len: int, close_id: int, item_list: bool, ngram: int = 24, ignore_ids: tuple = ()):
        self.prompt_len = prompt_len
        self.close_id = close_id
        self.item_list = item_list
        self.ngram = ngram
        self.ignore = set(ignore_ids)  # separators/pads that do not make two items differ
        self.stopped: torch.Tensor | None = None
        self._seen: list[set[tuple[int, ...]]] = []  # per row: the n-grams of the answer so far (captions)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        """input_ids: (B, L) prompt + answer so far. Returns (B,) bools: stop this row now."""
        answers = input_ids[:, self.prompt_len :].tolist()
        if not self._seen:
            self._seen = [set() for _ in answers]
        done = [self._loops(row, seen) for row, seen in zip(answers, self._seen)]
        flags = torch.tensor(done, dtype=torch.bool, device=input_ids.device)
        self.stopped = flags if self.stopped is None else (self.stopped | flags)
        return flags

    def _loops(self, row: list[int], seen: set[tuple[int, ...]]) -> bool:
        if self.item_list:
            if not row or row[-1] != self.close_id:
                return False
            items, current = [], []
            for tok in row:
                if tok not in self.ignore:
                    current.append(tok)
                if tok == self.close_id:
                    items.append(tuple(current))
                    current = []
            return items[-1] in items[:-1]
        if len(row) < self.ngram:
            return False
        tail = tuple(row[-self.ngram :])  # one new n-gram per call: O(ngram) per row and step
        if tail in seen:
            return True
        seen.add(tail)
        return False


class NoRepeatText(LogitsProcessor):
    """Steers a caption out of a loop instead of ending it: the token that would complete an ``ngram``-token
    run already written in the same answer is forbidden (transformers' ``no_repeat_ngram_size`` also counts
    the prompt, which would forbid copying the given tags). Runs that include box tokens are left alone:
    two mentions of one box are the box constraint's business. Scores are (batch, vocab)."""

    def __init__(self, prompt_len: int, ngram: int, box_ids: set[int]):
        self.prompt_len, self.ngram, self.box_ids = prompt_len, ngram, box_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_len :].tolist()):
            prefix = tuple(ids[len(ids) - self.ngram + 1 :]) if len(ids) >= self.ngram else None
            if not prefix or self.box_ids.intersection(prefix):
                continue
            banned = {ids[i + len(prefix)] for i in range(len(ids) - len(prefix))
                      if tuple(ids[i : i + len(prefix)]) == prefix}
            banned -= self.box_ids
            if banned:
                scores[row, sorted(banned)] = float("-inf")
        return scores
