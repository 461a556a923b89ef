"""WordNet 3.0 noun lemma names without nltk data: a derived table shipped in the repo.

The official ``syn(a, b)`` takes, for every word of a tag, the lemma names of all noun synsets that
``nltk.corpus.wordnet.synsets(word, pos=NOUN)`` returns. That call lower-cases the word, lemmatizes it
with nltk's ``morphy`` (noun exception list, else one pass of the detachment rules; the original form is
kept when it is itself a lemma) and collects the synsets of every resulting lemma. Only three things of
WordNet are needed for that, and they are what the table holds (gzipped text, ``pancapchain/eval/data``):

* ``S`` lines: one noun synset each (its lemma names as written, space separated);
* ``E`` lines: a noun exception (inflected form and its base forms);
* the lemma index is not stored: WordNet 3.0's ``index.noun`` is exactly "lower-cased lemma name -> the
  synsets that have it", so the loader rebuilds it (the build checks that equality and refuses otherwise).

Rebuild it from WordNet 3.0's dict files (Debian: ``apt-get install wordnet-base``)::

    python -m pancapchain.eval.wordnet_table --wordnet-dir /usr/share/wordnet

``tests/test_eval_wordnet.py`` checks that the table answers exactly as nltk + WordNet 3.0 does.
The data is WordNet's (licence: ``pancapchain/eval/data/WORDNET-LICENSE.txt``).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("data") / "wordnet_noun_lemmas.txt.gz"
HEADER = "# WordNet 3.0 noun lemma table for PancapScore syn(); derived data, see WORDNET-LICENSE.txt"

# nltk's noun detachment rules (WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS[NOUN]), applied once
NOUN_SUFFIXES = (
    ("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"),
    ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"),
)  # fmt: skip


@dataclass
class NounTable:
    """The loaded table: synset lemma names, lemma -> synset numbers, noun exceptions."""

    synsets: list[tuple[str, ...]]
    lemmas: dict[str, tuple[int, ...]]
    exceptions: dict[str, tuple[str, ...]]

    def morphy(self, form: str) -> list[str]:
        """nltk's ``_morphy(form, NOUN)``: the index lemmas ``form`` may be an inflection of (in order)."""
        if form in self.exceptions:
            candidates = [form, *self.exceptions[form]]
        else:
            candidates = [form] + [form[: -len(old)] + new for old, new in NOUN_SUFFIXES if form.endswith(old)]
        return list(dict.fromkeys(c for c in candidates if c in self.lemmas))

    def noun_lemma_names(self, word: str) -> frozenset[str]:
        """Lemma names of every noun synset of ``word`` (as ``wn.synsets(word, NOUN)`` + ``.lemmas()``)."""
        return frozenset(
            name for lemma in self.morphy(word.lower()) for s in self.lemmas[lemma] for name in self.synsets[s]
        )


def _data_noun_names(path: Path) -> dict[int, tuple[str, ...]]:
    """data.noun: synset offset -> its lemma words (field 4 is the hex word count, words alternate with lex ids)."""
    names = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(" "):
                continue  # licence header
            fields = line.split()
            count = int(fields[3], 16)
            names[int(fields[0])] = tuple(fields[4 : 4 + 2 * count : 2])
    return names


def _index_noun(path: Path) -> dict[str, list[int]]:
    """index.noun: lemma -> synset offsets (the last ``synset_cnt`` fields of its line)."""
    index = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            fields = line.split()
            count = int(fields[2])
            index[fields[0]] = [int(v) for v in fields[len(fields) - count :]]
    return index


def _invert(synsets: list[tuple[str, ...]]) -> dict[str, tuple[int, ...]]:
    """Lower-cased lemma name -> sorted numbers of the synsets that have it (WordNet's index)."""
    index: dict[str, set[int]] = {}
    for k, names in enumerate(synsets):
        for name in names:
            index.setdefault(name.lower(), set()).add(k)
    return {lemma: tuple(sorted(ids)) for lemma, ids in index.items()}


def build_table_text(wordnet_dir: Path) -> str:
    """The table's text from WordNet's ``index.noun``, ``data.noun`` and ``noun.exc``."""
    missing = [n for n in ("index.noun", "data.noun", "noun.exc") if not (wordnet_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{wordnet_dir} is not a WordNet dict folder: missing {', '.join(missing)}")
    names = _data_noun_names(wordnet_dir / "data.noun")
    index = _index_noun(wordnet_dir / "index.noun")
    offsets = sorted(names)
    derived = _invert([names[off] for off in offsets])
    number = {off: k for k, off in enumerate(offsets)}
    expected = {lemma: tuple(sorted(number[o] for o in offs)) for lemma, offs in index.items()}
    if derived != expected:
        diff = sorted(set(derived.items()) ^ set(expected.items()))[0][0]
        raise ValueError(f"{wordnet_dir}: index.noun is not derivable from data.noun (first difference: {diff!r})")
    lines = [HEADER] + ["S\t" + " ".join(names[off]) for off in offsets]
    with open(wordnet_dir / "noun.exc", encoding="utf-8") as fh:
        exc = sorted(line.split() for line in fh if line.strip())
    lines += ["E\t" + "\t".join([terms[0], " ".join(terms[1:])]) for terms in exc]
    return "\n".join(lines) + "\n"


def write_table(wordnet_dir: Path, out: Path = TABLE_PATH) -> Path:
    """Build the table and write it gzipped, atomically (mtime 0 so a rebuild is byte-identical)."""
    data = gzip.compress(build_table_text(wordnet_dir).encode("utf-8"), compresslevel=9, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, out)
    return out


def parse_table(text: str, source: str = "table") -> NounTable:
    """Parse the table text; a malformed line raises ValueError naming the line."""
    synsets, exceptions = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition("\t")
        try:
            if kind == "S":
                synsets.append(tuple(rest.split(" ")))
            elif kind == "E":
                form, bases = rest.split("\t")
                exceptions[form] = tuple(bases.split(" "))
            else:
                raise ValueError(f"unknown line kind {kind!r}")
        except ValueError as err:
            raise ValueError(f"{source} line {lineno}: malformed WordNet table line ({err})") from None
    if not synsets:
        raise ValueError(f"{source}: the WordNet table has no synset line")
    return NounTable(synsets, _invert(synsets), exceptions)


@functools.lru_cache(maxsize=2)
def load_table(path: Path = TABLE_PATH) -> NounTable | None:
    """The shipped table (cached), or None when the file is absent."""
    if not Path(path).is_file():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return parse_table(fh.read(), str(path))


def main(argv: list[str] | None = None) -> int:
    """Command line: rebuild the table from a WordNet 3.0 dict folder."""
    ap = argparse.ArgumentParser(prog="python -m pancapchain.eval.wordnet_table", description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"),
                    help="WordNet 3.0 dict folder (index.noun, data.noun, noun.exc)")
    ap.add_argument("--out", type=Path, default=TABLE_PATH)
    args = ap.parse_args(argv)
    out = write_table(args.wordnet_dir, args.out)
    table = parse_table(gzip.decompress(out.read_bytes()).decode("utf-8"), str(out))
    print(f"wrote {out}: {len(table.synsets)} synsets, {len(table.lemmas)} lemmas, "
          f"{len(table.exceptions)} exceptions, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
