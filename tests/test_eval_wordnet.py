"""The official synonym rule from the shipped WordNet 3.0 table: hand-made pairs with the official scores,
equality with nltk + WordNet 3.0 on every word of the real val tags, and a byte-identical rebuild."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from pancapchain.eval import matching
from pancapchain.eval.matching import TaggedEntity, match_entities, synonym_score
from pancapchain.eval.wordnet_table import TABLE_PATH, build_table_text, load_table, parse_table

WORDNET_DIR = Path("/usr/share/wordnet")
VAL_CAPTIONS = Path("/work/shared/data/sapancap/val_gtcaption.json")
EPS = 1e-6  # the official denominator guard: |S1 & S2| / (|S1 | S2| + 1e-6)

# (tag a, tag b, |shared lemma names|, |all lemma names|), counted by hand from nltk + WordNet 3.0
OFFICIAL_PAIRS = [
    ("sofa", "couch", 3, 3),  # {couch, lounge, sofa} on both sides
    ("car", "automobile", 5, 11),  # car's 11 names include automobile's 5
    ("dog", "hound", 6, 23),  # 22 names of dog, 7 of hound
    ("women", "woman", 8, 8),  # plural via the noun exception list
    ("leaves", "foliage", 3, 10),  # "leaves" -> leaf and leave (the -ves rule keeps "leave" too)
    ("red sofa", "couch", 3, 13),  # every word of a tag contributes (red's 10 noun names)
    ("glasses", "spectacles", 4, 22),
]


@pytest.mark.parametrize("a,b,shared,union", OFFICIAL_PAIRS)
def test_official_jaccard_on_hand_made_pairs(a, b, shared, union):
    assert synonym_score(a, b) == pytest.approx(shared / (union + EPS), abs=1e-12)
    assert synonym_score(b, a) == pytest.approx(shared / (union + EPS), abs=1e-12)


def test_containment_first_and_no_wordnet_option():
    assert synonym_score("kitty", "cat") == 0.0  # no shared noun lemma name
    assert synonym_score("cat", "black cat") == 1.0  # substring wins before WordNet
    assert synonym_score("sofa", "couch", use_wordnet=False) == 0.0
    assert matching.wordnet_status().startswith("wordnet: WordNet 3.0")
    assert matching.wordnet_status(False) == "containment only: --no-wordnet"
    match = match_entities([TaggedEntity("sofa")], [TaggedEntity("couch")], None)
    assert match.pairs == [(0, 0)] and match.cost[0, 0] == pytest.approx(-100 * 3 / (3 + EPS))


def test_missing_table_is_reported(monkeypatch):
    monkeypatch.setattr(matching, "load_table", lambda: None)
    matching._noun_lemmas.cache_clear()
    try:
        assert matching.wordnet_status().startswith("containment only: the WordNet table")
        assert synonym_score("sofa", "couch") == 0.0
    finally:
        matching._noun_lemmas.cache_clear()


def test_malformed_table_line_is_named():
    with pytest.raises(ValueError, match="line 2: malformed WordNet table line"):
        parse_table("S\tdog domestic_dog\nX\tjunk\n")
    table = parse_table("S\tdog domestic_dog Canis_familiaris\nS\tfrump dog\nE\tdogs\tdog\n")
    assert table.lemmas["canis_familiaris"] == (0,) and table.lemmas["dog"] == (0, 1)
    assert table.noun_lemma_names("Dogs") == {"dog", "domestic_dog", "Canis_familiaris", "frump"}


needs_wordnet = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(),
                                   reason="needs WordNet 3.0 dict files (Debian package wordnet-base)")


@needs_wordnet
def test_rebuild_is_byte_identical_to_the_shipped_table():
    shipped = gzip.decompress(TABLE_PATH.read_bytes()).decode("utf-8")
    assert build_table_text(WORDNET_DIR) == shipped


# the 45 lexicographer file names of WordNet 3.0, in file-number order (nltk's reader needs this file)
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity "
    "noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion "
    "verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _nltk_wordnet(root: Path, monkeypatch):
    nltk = pytest.importorskip("nltk")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", [str(root.parent.parent), *nltk.data.path])  # nltk reads only its roots
    root.mkdir(parents=True)
    for f in WORDNET_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, root / f.name)  # nltk refuses symlinks that leave its root
    (root / "lexnames").write_text(
        "".join(f"{i:02d}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)))
    # nltk >= 3.9 maps sense keys onto WordNet 3.0 when it opens a reader (for Open Multilingual WordNet); Debian's
    # package ships no index.sense. An empty one maps nothing, and English synset lookups never use the map.
    if not (root / "index.sense").exists():
        (root / "index.sense").write_text("")
    return WordNetCorpusReader(str(root), None)


@needs_wordnet
@pytest.mark.skipif(not VAL_CAPTIONS.is_file(), reason="needs the SA-Pancap val captions")
def test_table_equals_nltk_on_every_word_of_the_val_tags(tmp_path, monkeypatch):
    from pancapchain.data.caption_parser import caption_entities, parse_caption

    wn = _nltk_wordnet(tmp_path / "corpora" / "wordnet", monkeypatch)
    assert wn.get_version() == "3.0"
    words = {"women", "leaves", "buses", "mice", "geese", "glasses", "boxes", "dishes", "Dogs", "x", "'s"}
    for record in json.loads(VAL_CAPTIONS.read_text()):
        for tag, _ in caption_entities(parse_caption(record["gt_response"])):
            words.update(tag.split())
    table = load_table()
    differ = [w for w in sorted(words)
              if table.noun_lemma_names(w) != {lemma.name() for s in wn.synsets(w, wn.NOUN) for lemma in s.lemmas()}]
    assert len(words) > 1000 and differ == []
