"""Captions refer back only to entities they have named: "... is overlapping the white ring" needs a white ring.

A box-first caption names each entity once, with its box ("a <box>..</box> small striped white ring"), and may
refer to it later by its tag alone, as the training captions do in their relation sentences ("... is overlapping
the white ring."). The tiny model writes such references to entities its caption never named: on the benchmark's
chain checkpoint 342 of 379 relation sentences named an object that was not in the caption
(docs/learning_quality.md), a claim neither a reader nor the scorer can tie to anything.

This logits processor keeps a reference to the named entities. Right after a determiner ("the", "The"), a token
that would start one of the known tags (the training data's tags, stored in the checkpoint as
``reference_tags``) is allowed only if it starts the tag of an entity the answer has already named; the next
token likewise, until the tag is complete. Nothing else is constrained: the model still decides whether to write
a reference at all, which named entity it means, and every other word (``the <box>``, ``the top left corner``).
One word is never allowed after a determiner: "None", stage 3's "nothing missing" answer, which the model
otherwise wrote where no named entity was left to refer to ("is overlapping the None").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import LogitsProcessor

from pancapchain.constants import BOX_CLOSE, DISCOVER_NONE
from pancapchain.data.io import load_samples
from pancapchain.data.schema import PanopticSample

# A mention's tag starts at most this many tokens after its box closes: box-first mentions put size, pattern and
# colour words before the tag's last word ("</box> large dotted yellow hexagon" has the tag "yellow hexagon").
MENTION_OFFSET = 3
DETERMINERS = ("the", " the", "The", " The")  # as a token after a space, at a sentence start, or after a newline
TagIds = tuple[int, ...]
REFERENCE_TAGS_KEY = "reference_tags"  # checkpoint metadata: the training data's tags (box-first captions only)


def entity_tags(samples: Iterable[PanopticSample]) -> list[str]:
    """The distinct entity tags of ``samples``, sorted."""
    return sorted({e.tag.strip() for sample in samples for e in sample.entities if e.tag.strip()})


def training_tags(path: str | Path) -> list[str]:
    """The distinct entity tags of a panoptic JSONL's valid samples (read and checked as training reads them)."""
    return entity_tags(load_samples(path)[0])


class NamedReferences(LogitsProcessor):
    """Per row: a tag written right after a determiner continues the tag of an entity named earlier in the answer.

    ``prompt_len``: the (left-padded) prompt length, answers start there; ``tags``: every known tag as its token
    ids (leading space, as the tag follows a word); ``determiners``: token ids of "the"; ``close_id``: ``</box>``;
    ``stops``: the full stop's token ids (sentence ends); ``never``: token ids never allowed right after a
    determiner. Scores are (batch, vocab); forbidden ids get -inf.
    """

    def __init__(self, prompt_len: int, tags: Iterable[TagIds], determiners: Iterable[int], close_id: int,
                 stops: Iterable[int] = (), never: Iterable[int] = ()):
        self.prompt_len = prompt_len
        self.never = set(never)
        self.stops = set(stops)
        self.tags = {t for t in tags if t}
        self.determiners = set(determiners)
        self.close_id = close_id
        self.longest = max((len(t) for t in self.tags), default=0)
        self._named: list[dict[TagIds, list[int]]] = []  # per row: tag -> sentence of each mention with a box
        self._pending: list[list[int]] = []  # per row: answer positions of </box> whose mention is not read yet

    @classmethod
    def build(cls, prompt_len: int, tokenizer, tags: Sequence[str]) -> NamedReferences | None:
        """The processor for ``tags`` (strings) with ``tokenizer``; None when there is nothing to constrain."""
        ids = [tuple(tokenizer(" " + t.strip(), add_special_tokens=False)["input_ids"]) for t in tags if t.strip()]
        encodings = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in DETERMINERS]
        determiners = [enc[0] for enc in encodings if len(enc) == 1]
        close_id = tokenizer.convert_tokens_to_ids(BOX_CLOSE)
        if not ids or not determiners or close_id is None or close_id == tokenizer.unk_token_id:
            return None
        stops = tokenizer(".", add_special_tokens=False)["input_ids"]
        none = tokenizer(" " + DISCOVER_NONE, add_special_tokens=False)["input_ids"]
        return cls(prompt_len, ids, determiners, close_id, stops[:1] if len(stops) == 1 else (),
                   none[:1] if len(none) == 1 else ())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self._named:
            self._named = [{} for _ in range(input_ids.shape[0])]
            # an answer given with the prompt (a rewrite decodes on from a prefix, pancapchain.infer.late_boxes)
            # names its entities too: every </box> before its last token is read like one written here
            self._pending = [[i for i, t in enumerate(input_ids[row, self.prompt_len : -1].tolist()) if t == self.close_id]
                             for row in range(input_ids.shape[0])]
        for row in range(scores.shape[0]):
            answer = input_ids[row, self.prompt_len :].tolist()
            self._read_mentions(row, answer)
            forbidden = self.forbidden_next(answer, self._named[row])
            if forbidden:
                scores[row, sorted(forbidden)] = float("-inf")
        return scores

    def _sentence(self, words: list[int]) -> int:
        """Index of the sentence the next token belongs to (sentences end with a full stop token)."""
        return sum(1 for w in words if w in self.stops)

    @staticmethod
    def referable(named: dict[TagIds, list[int]], sentence: int) -> set[TagIds]:
        """Tags a reference may name: named exactly once (two red circles make "the red circle" ambiguous, so the
        training captions never write it), in an earlier sentence (a sentence does not refer to its own subject)."""
        return {tag for tag, where in named.items() if len(where) == 1 and where[0] < sentence}

    def _read_mentions(self, row: int, answer: list[int]) -> None:
        """Record the tags (and sentence) of the mentions complete so far in the row's named tags."""
        if answer and answer[-1] == self.close_id:
            self._pending[row].append(len(answer) - 1)
        still = []
        for close in self._pending[row]:
            after = answer[close + 1 : close + 1 + MENTION_OFFSET + self.longest]
            tag = self.tag_at(after)
            if tag is not None:
                self._named[row].setdefault(tag, []).append(self._sentence(answer[:close]))
            elif len(after) < MENTION_OFFSET + self.longest:
                still.append(close)  # the mention may still be written
        self._pending[row] = still

    def tag_at(self, words: list[int]) -> TagIds | None:
        """The longest known tag starting earliest within the first MENTION_OFFSET + 1 tokens of ``words``."""
        for start in range(min(MENTION_OFFSET + 1, len(words))):
            found = [t for t in self.tags if tuple(words[start : start + len(t)]) == t]
            if found:
                return max(found, key=len)
        return None

    def forbidden_next(self, answer: list[int], named: dict[TagIds, list[int]]) -> set[int]:
        """Token ids that would start or continue a known tag no referable entity has (``named``: tag -> sentence
        of each of its mentions), right after the answer's last determiner."""
        for back in range(min(self.longest, len(answer))):
            if answer[-1 - back] in self.determiners:
                written = tuple(answer[len(answer) - back :])
                never = self.never if not written else set()
                known = _next_tokens(self.tags, written)
                if not known:
                    return never
                return (known - _next_tokens(self.referable(named, self._sentence(answer)), written)) | never
        return set()


def _next_tokens(tags: Iterable[TagIds], written: TagIds) -> set[int]:
    """The tokens that continue ``written`` along one of ``tags`` (``written`` a proper prefix of the tag)."""
    n = len(written)
    return {t[n] for t in tags if len(t) > n and t[:n] == written}
