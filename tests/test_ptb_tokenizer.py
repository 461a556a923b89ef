"""coco-caption tokenization (PTB rules, lower case, its punctuation list removed) on hand-made cases whose
expected tokens follow the Penn Treebank rules, and METEOR found through PANCAPCHAIN_METEOR_JAR."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from pancapchain.eval.caption_metrics import meteor, meteor_status
from pancapchain.eval.ptb_tokenizer import ptb_tokens, tokenize

# Expected outputs written down from the PTB rules (clitics split, hyphenated words and numbers kept whole,
# brackets as -LRB-/-RRB- lower-cased by -lowerCase, punctuation of coco-caption's list removed).
REFERENCE = [
    ("A dog's toy.", ["a", "dog", "'s", "toy"]),
    ("The man doesn't see the black-and-white cat, it's 0.25 m away.",
     ["the", "man", "does", "n't", "see", "the", "black-and-white", "cat", "it", "'s", "0.25", "m", "away"]),
    ("Two (small) boats", ["two", "-lrb-", "small", "-rrb-", "boats"]),
    ('He said "hello!" -- then left...', ["he", "said", "hello", "then", "left"]),
    ("I can't, won't and cannot.", ["i", "ca", "n't", "wo", "n't", "and", "can", "not"]),
    ("They're here; we've 1,000 cats & 50% dogs: U.S. style",
     ["they", "'re", "here", "we", "'ve", "1,000", "cats", "&", "50", "%", "dogs", "u.s.", "style"]),
    ("the dogs' bowls", ["the", "dogs", "bowls"]),
    ("I'm sure she'd say we'll go", ["i", "'m", "sure", "she", "'d", "say", "we", "'ll", "go"]),
    ("<p> a cat </p>", ["<p>", "a", "cat", "</p>"]),
    ("It\u2019s a \u201cred\u201d car", ["it", "'s", "a", "red", "car"]),
    ("10:30 a.m. on 3/4 of AT&T's land, e.g. rock-n-roll.",
     ["10:30", "a.m.", "on", "3/4", "of", "at&t", "'s", "land", "e.g.", "rock-n-roll"]),
    ("'Hello,' she said. A cat(s)", ["hello", "she", "said", "a", "cat", "-lrb-", "s", "-rrb-"]),
    ("Mr. Smith's car costs $5; wait...what?", ["mr.", "smith", "'s", "car", "costs", "$", "5", "wait", "what"]),
    ("gonna see a well-lit, 3.5-inch screen", ["gon", "na", "see", "a", "well-lit", "3.5-inch", "screen"]),
]


@pytest.mark.parametrize("text,expected", REFERENCE, ids=[t[:24] for t, _ in REFERENCE])
def test_tokens_follow_the_ptb_rules(text, expected):
    assert tokenize(text) == expected


def test_punctuation_tokens_before_the_filter():
    assert ptb_tokens('"Hi," (he) said.') == ["``", "Hi", ",", "''", "-LRB-", "he", "-RRB-", "said", "."]


FAKE_JAVA = '''#!{python}
"""Stands in for `java -jar meteor-1.5.jar - - -stdio`: answers SCORE with the token counts, EVAL with scores."""
import sys
for line in sys.stdin:
    parts = [p.strip() for p in line.rstrip("\\n").split("|||")]
    if parts[0] == "SCORE":
        print(" ".join(str(len(p.split())) for p in parts[1:]), flush=True)
    elif parts[0] == "EVAL":
        stats = parts[1:]
        for s in stats:
            print("0.5", flush=True)
        print(str(sum(int(s.split()[-1]) for s in stats) / 100), flush=True)
'''


@pytest.mark.timeout(60)
def test_meteor_jar_from_the_environment_variable(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(FAKE_JAVA.format(python=sys.executable))
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    jar = tmp_path / "meteor" / "meteor-1.5.jar"
    jar.parent.mkdir()
    jar.write_bytes(b"PK")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PANCAPCHAIN_METEOR_JAR", raising=False)
    available, note = meteor_status()
    assert not available and "PANCAPCHAIN_METEOR_JAR" in note
    monkeypatch.setenv("PANCAPCHAIN_METEOR_JAR", str(jar))
    assert meteor_status() == (True, f"METEOR 1.5 ({jar})")
    # the jar receives PTB tokens: "dog's" -> "dog 's" (hypothesis of 4 tokens, then 3 tokens)
    score = meteor({"a": ["a dog runs"], "b": ["two cats"]}, {"a": "the dog's ball.", "b": "cats (two)"})
    assert score == pytest.approx((4 + 4) / 100)
    monkeypatch.setenv("PANCAPCHAIN_METEOR_JAR", str(Path(tmp_path / "missing.jar")))
    assert not meteor_status()[0]
