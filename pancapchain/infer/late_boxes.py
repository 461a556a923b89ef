"""Captions that would end with given boxes left are rewritten from their closing paragraph.

In ordered given-box mode (:mod:`pancapchain.infer.given_boxes`) a caption may not end before it has written all
its given boxes; where it would end, it opens the next box there. When the model has already written its closing
paragraph (the tiny captions' light and palette sentences), the boxes forced in after it garble that paragraph:
"The colors look vivid.<box>..</box> large yellow triangle in the center. The scene is shown at a <box>.." (56 of
the benchmark's 200 captions; docs/learning_quality.md). The fix needs hindsight, which a logits processor does
not have: the answer is decoded again from just before that box-less paragraph, with paragraph breaks held back
until every given box is written, so the remaining mentions continue the paragraph before it; after them the
answer may not end before a paragraph break, so the closing paragraph is written again.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

# tokenizer -> its newline token ids (a scan of the vocabulary, done once per tokenizer; weak keys, so a new
# tokenizer at a freed one's address never reads its list)
_BREAK_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def break_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's tokens whose text contains a newline (a paragraph break is a run of them)."""
    if tokenizer not in _BREAK_IDS:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        # the plain newline first: a rewrite that would end without its closing paragraph writes it there
        _BREAK_IDS[tokenizer] = sorted((i for i, text in enumerate(texts) if "\n" in text),
                                       key=lambda i: texts[i] != "\n")
    return _BREAK_IDS[tokenizer]


def closing_paragraph_start(answer: Sequence[int], end: int, breaks: set[int], open_id: int) -> int | None:
    """Where to decode ``answer`` again from: the first token of the paragraph break that opens the box-less
    paragraph the answer wanted to end with at ``end``; None when the paragraph before ``end`` has a box (the
    forced box just continues it) or the answer has no break before ``end``."""
    last = next((i for i in range(min(end, len(answer)) - 1, -1, -1) if answer[i] in breaks), None)
    if last is None:
        return None
    start = last
    while start > 0 and answer[start - 1] in breaks:
        start -= 1
    if start == 0 or open_id in answer[last:end]:
        return None
    return start
