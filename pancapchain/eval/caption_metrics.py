"""Caption metrics in pure Python: BLEU-4, CIDEr-D, ROUGE-L (coco-caption definitions); METEOR 1.5 via Java.

Inputs are ``{image_id: [reference, ...]}`` and ``{image_id: hypothesis}``; inline boxes should be removed
first (the runner uses the caption parser's ``strip_boxes``). Tokenisation is coco-caption's: PTB rules,
lower case, its punctuation list removed (pure Python, :mod:`pancapchain.eval.ptb_tokenizer`).

* BLEU-4: corpus BLEU, n-gram counts clipped by the maximum count in any reference, brevity penalty with
  the reference length closest to each hypothesis, geometric mean of the 1..4-gram precisions.
* CIDEr-D: tf-idf n-gram vectors (n = 1..4, document frequencies from the references of the whole set),
  clipped cosine (min(h, r) * r), Gaussian length penalty sigma = 6, mean over n and references, x10.
* ROUGE-L: longest common subsequence, max precision and max recall over references, F with beta = 1.2.
* METEOR: only when ``java`` is on PATH and the METEOR 1.5 jar is found: ``--meteor-jar PATH``, else the
  environment variable ``PANCAPCHAIN_METEOR_JAR``, else the copy inside an installed pycocoevalcap;
  otherwise it is skipped and the reason is reported.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from pancapchain.eval.ptb_tokenizer import tokenize

METEOR_JAR_ENV = "PANCAPCHAIN_METEOR_JAR"


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _check_inputs(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str]) -> list[str]:
    ids = sorted(hyps)
    missing = [i for i in ids if not refs.get(i)]
    if missing:
        raise ValueError(f"images without references: {missing[:5]}")
    return ids


# -------------------------------------------------------------------------------------------------- BLEU


def bleu(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], max_n: int = 4) -> float:
    """Corpus BLEU-max_n in [0, 1]."""
    ids = _check_inputs(refs, hyps)
    correct = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for image_id in ids:
        hyp = tokenize(hyps[image_id])
        ref_tokens = [tokenize(r) for r in refs[image_id]]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            hyp_ngrams = ngram_counts(hyp, n)
            max_ref: Counter = Counter()
            for r in ref_tokens:
                max_ref |= ngram_counts(r, n)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in hyp_ngrams.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0:
        return 0.0
    tiny, small = 1e-15, 1e-9  # the coco-caption scorer's guards against log(0)
    log_prec = sum(math.log((c + tiny) / (t + small)) for c, t in zip(correct, total)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_prec)


# ------------------------------------------------------------------------------------------------ CIDEr-D


def _tfidf(tokens: Sequence[str], doc_freq: Counter, log_n_docs: float, max_n: int):
    vectors, norms = [], []
    for n in range(1, max_n + 1):
        vec = {
            g: tf * (log_n_docs - math.log(max(1.0, doc_freq[g])))
            for g, tf in ngram_counts(tokens, n).items()
        }
        vectors.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vectors, norms


def cider_d(
    refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], max_n: int = 4, sigma: float = 6.0
) -> float:
    """Corpus CIDEr-D (mean over images of the per-image score, x10 as in coco-caption)."""
    ids = _check_inputs(refs, hyps)
    if not ids:
        return 0.0
    ref_tokens = {i: [tokenize(r) for r in refs[i]] for i in ids}
    doc_freq: Counter = Counter()
    for i in ids:
        seen = set()
        for r in ref_tokens[i]:
            for n in range(1, max_n + 1):
                seen.update(ngram_counts(r, n))
        doc_freq.update(seen)
    log_n_docs = math.log(float(len(ids)))
    image_scores = []
    for i in ids:
        hyp = tokenize(hyps[i])
        h_vec, h_norm = _tfidf(hyp, doc_freq, log_n_docs, max_n)
        per_ref = []
        for r in ref_tokens[i]:
            r_vec, r_norm = _tfidf(r, doc_freq, log_n_docs, max_n)
            penalty = math.exp(-((len(hyp) - len(r)) ** 2) / (2 * sigma**2))
            sims = []
            for n in range(max_n):
                dot = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, v in h_vec[n].items())
                denom = h_norm[n] * r_norm[n]
                sims.append(penalty * dot / denom if denom else 0.0)
            per_ref.append(sum(sims) / max_n)
        image_scores.append(10.0 * sum(per_ref) / len(per_ref))
    return sum(image_scores) / len(image_scores)


# ------------------------------------------------------------------------------------------------ ROUGE-L


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], beta: float = 1.2) -> float:
    """Mean over images of ROUGE-L F (max precision and max recall over the references)."""
    ids = _check_inputs(refs, hyps)
    scores = []
    for i in ids:
        hyp = tokenize(hyps[i])
        precisions, recalls = [], []
        for r in refs[i]:
            ref = tokenize(r)
            lcs = lcs_length(hyp, ref)
            precisions.append(lcs / len(hyp) if hyp else 0.0)
            recalls.append(lcs / len(ref) if ref else 0.0)
        p, r = max(precisions), max(recalls)
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p and r else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


# ------------------------------------------------------------------------------------------------- METEOR


def find_meteor_jar(explicit: str | Path | None = None) -> Path | None:
    """The METEOR 1.5 jar: an explicit path, else $PANCAPCHAIN_METEOR_JAR, else pycocoevalcap's copy."""
    explicit = explicit or os.environ.get(METEOR_JAR_ENV, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() else None
    spec = importlib.util.find_spec("pycocoevalcap")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "meteor" / "meteor-1.5.jar"
        if path.is_file():
            return path
    return None


def meteor_status(jar: str | Path | None = None) -> tuple[bool, str]:
    """(available, note) for the report."""
    if shutil.which("java") is None:
        return False, "METEOR skipped: java is not on PATH"
    found = find_meteor_jar(jar)
    if found is None:
        where = f" at {jar or os.environ.get(METEOR_JAR_ENV)}" if (jar or os.environ.get(METEOR_JAR_ENV)) else ""
        return False, (f"METEOR skipped: meteor-1.5.jar not found{where} (--meteor-jar PATH or "
                       f"{METEOR_JAR_ENV}=PATH; the jar ships in the PyPI package pycocoevalcap)")
    return True, f"METEOR 1.5 ({found})"


class _MeteorSession:
    """One ``java -jar meteor-1.5.jar -stdio`` process spoken to line by line; killed after ``timeout`` s."""

    def __init__(self, jar: Path, timeout: float):
        cmd = ["java", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
        self.proc = subprocess.Popen(
            cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        self.watchdog = threading.Timer(timeout, self.proc.kill)
        self.watchdog.start()

    def ask(self, line: str, n_replies: int = 1) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        replies = [self.proc.stdout.readline() for _ in range(n_replies)]
        if any(not r for r in replies):
            raise RuntimeError("METEOR process ended early (crash or timeout)")
        return [r.strip() for r in replies]

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()


def meteor(
    refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], jar: str | Path | None = None,
    timeout: float = 600.0,
) -> float:
    """Corpus METEOR 1.5 (the jar's own aggregate over per-image statistics)."""
    found = find_meteor_jar(jar)
    if found is None or shutil.which("java") is None:
        raise RuntimeError(meteor_status(jar)[1])
    ids = _check_inputs(refs, hyps)
    if not ids:
        return 0.0

    def clean(text: str) -> str:
        return " ".join(tokenize(text.replace("|||", " ")))

    session = _MeteorSession(found, timeout)
    try:
        stats = [
            session.ask(" ||| ".join(["SCORE", *(clean(r) for r in refs[i]), clean(hyps[i])]))[0] for i in ids
        ]
        replies = session.ask("EVAL ||| " + " ||| ".join(stats), n_replies=len(ids) + 1)
    finally:
        session.close()
    return float(replies[-1])


def caption_metrics(
    refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], use_meteor: bool = True,
    meteor_jar: str | Path | None = None,
) -> tuple[dict[str, float], list[str]]:
    """All caption metrics in [0, 1] (CIDEr-D in [0, 10]) and notes (e.g. why METEOR was skipped)."""
    scores = {"BLEU-4": bleu(refs, hyps), "CIDEr-D": cider_d(refs, hyps), "ROUGE-L": rouge_l(refs, hyps)}
    notes = []
    available, note = meteor_status(meteor_jar)
    if use_meteor and available:
        try:
            scores["METEOR"] = meteor(refs, hyps, meteor_jar)
        except (RuntimeError, OSError, ValueError) as err:
            notes.append(f"METEOR skipped: {err}")
        else:
            notes.append(note)
    else:
        notes.append(note if not available else "METEOR skipped: disabled by the caller")
    return scores, notes
