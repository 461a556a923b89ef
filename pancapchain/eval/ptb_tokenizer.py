"""Caption tokenization as coco-caption does it, in pure Python (no Java, no CoreNLP).

coco-caption pipes each caption through Stanford's PTBTokenizer (``-preserveLines -lowerCase``) and drops
the tokens of a fixed punctuation list. The Penn Treebank rules that matter for captions, implemented here:

* whitespace first, then punctuation split off the edges of each word: ``. , ; : ! ? ... -- " ' ( ) [ ] { }``
  and the symbols ``$ % # @ * + = ^ ~ | \\``; quotes become ````` / ``''`` / ````` / ``'``;
* clitics split off: ``'s 'm 'd 're 've 'll n't`` (``dog's`` -> ``dog 's``, ``don't`` -> ``do n't``,
  ``can't`` -> ``ca n't``, ``won't`` -> ``wo n't``), and ``cannot gonna gotta wanna lemme gimme`` in two;
* kept whole: hyphenated words (``black-and-white``), numbers (``0.25``, ``1,000``, ``10:30``, ``3/4``),
  acronyms and common abbreviations with their period (``u.s.``, ``a.m.``, ``e.g.``, ``mr.``), words with
  ``&`` or ``/`` inside, and SGML-style markup (``<box>``, ``</p>``);
* brackets become ``-LRB- -RRB- -LSB- -RSB- -LCB- -RCB-``; curly quotes and apostrophes count as ASCII ones.

Lower-casing happens before the punctuation filter (as with ``-lowerCase``), so bracket tokens stay in the
output as ``-lrb-`` etc.: the filter list names them in upper case and never matches.
"""

from __future__ import annotations

import re

# coco-caption's PTBTokenizer removes exactly these tokens (compared after lower-casing).
PUNCTUATIONS = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                          "-", "--", "...", ";"})
BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "vs.", "etc.", "inc.",
                           "ltd.", "co.", "corp.", "no.", "approx.", "ft.", "mt.", "ave."})
CLITICS = ("n't", "'s", "'m", "'d", "'re", "'ve", "'ll")
SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
               "wanna": ("wan", "na"), "lemme": ("lem", "me"), "gimme": ("gim", "me")}

_NORMALIZE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "--",
                            "\u2014": "--", "\u00a0": " "})
_MARKUP_RE = re.compile(r"(</?[A-Za-z][\w:.-]*/?>)")
_EDGE_SYMBOLS = set("$%#@*+=^~|\\")
_INNER_SPLIT_RE = re.compile(r"(\.\.\.|--|[()\[\]{};!?\"]|(?<!\d),|,(?!\d)|(?<!\d):|:(?!\d))")
_ACRONYM_RE = re.compile(r"^(?:[A-Za-z]\.)+$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:[.,:/]\d+)*|\.\d+)$")


def _quote(char: str, opening: bool) -> str:
    if char == '"':
        return "``" if opening else "''"
    return "`" if opening else "'"


def _peel_front(word: str, out: list[str]) -> str:
    while word:
        head = word[0]
        if head in BRACKETS:
            out.append(BRACKETS[head])
        elif head == '"' or (head in "'`" and not _is_clitic(word)):
            out.append(_quote(head, opening=True))
        elif head in _EDGE_SYMBOLS and len(word) > 1 and not _NUMBER_RE.match(word):
            out.append(head)
        else:
            return word
        word = word[1:]
    return word


def _is_clitic(word: str) -> bool:
    return word.lower() in CLITICS or bool(re.match(r"^'\d\ds$", word))  # 's alone, '90s


def _peel_back(word: str) -> tuple[str, list[str]]:
    tail: list[str] = []
    while word:
        if word.endswith("..."):
            tail.append("...")
            word = word[:-3]
        elif word[-1] in BRACKETS:
            tail.append(BRACKETS[word[-1]])
            word = word[:-1]
        elif word[-1] in ",;:!?\"":
            tail.append(_quote('"', opening=False) if word[-1] == '"' else word[-1])
            word = word[:-1]
        elif word[-1] == "'" and len(word) > 1:
            tail.append("'")  # closing quote or plural possessive (dogs' -> dogs ')
            word = word[:-1]
        elif word[-1] == "." and len(word) > 1 and not _keeps_period(word):
            tail.append(".")
            word = word[:-1]
        elif word[-1] in _EDGE_SYMBOLS and len(word) > 1:
            tail.append(word[-1])
            word = word[:-1]
        else:
            break
    return word, tail[::-1]


def _keeps_period(word: str) -> bool:
    return bool(_ACRONYM_RE.match(word)) or word.lower() in ABBREVIATIONS


def _split_clitics(word: str) -> list[str]:
    lower = word.lower()
    if lower in SPLIT_WORDS:
        first, second = SPLIT_WORDS[lower]
        return [word[: len(first)], word[len(first) :]]
    for clitic in CLITICS:
        if lower.endswith(clitic) and len(word) > len(clitic):
            stem = word[: -len(clitic)]
            return [*_split_clitics(stem), word[-len(clitic) :]]
    return [word]


def _word_tokens(word: str) -> list[str]:
    """PTB tokens of one whitespace-free chunk (markup already separated)."""
    if _MARKUP_RE.fullmatch(word) or word in ("-", "--", "...", "'", '"'):
        return [_quote(word, opening=True) if word in ("'", '"') else word]
    out: list[str] = []
    for part in (p for p in _INNER_SPLIT_RE.split(word) if p):
        if _INNER_SPLIT_RE.fullmatch(part):
            out.append(BRACKETS.get(part, _quote(part, opening=not out) if part == '"' else part))
            continue
        part = _peel_front(part, out)
        core, tail = _peel_back(part)
        if core:
            out.extend(_split_clitics(core))
        out.extend(tail)
    return out


def ptb_tokens(text: str) -> list[str]:
    """PTB tokens of ``text`` (case kept, punctuation kept)."""
    text = _MARKUP_RE.sub(r" \1 ", text.translate(_NORMALIZE).replace("\u2026", "..."))
    tokens: list[str] = []
    for word in text.split():
        tokens.extend(_word_tokens(word))
    return tokens


def tokenize(text: str) -> list[str]:
    """coco-caption's caption tokens: PTB tokens, lower-cased, with its punctuation list removed."""
    return [t for t in (tok.lower() for tok in ptb_tokens(text)) if t not in PUNCTUATIONS]
