"""Rule-based noun-phrase chunking that names what an inline box grounds (used by caption_parser).

Works on lower-cased word tokens (:func:`tokens`). The text *before* a box is cut back, from its end,
through filler ("is located at", "with bounding box coordinates", "(bounding box:"), locative phrases
("in the center of the image", "occupying most of the frame") and predicates ("is thin and silver")
until a noun phrase remains; :func:`backward_tag` returns it without determiners, numbers, possessors or
adverbs. :func:`forward_tag` reads the phrase after a copula for boxes that follow only a location
("In the corner, at [[b]], are two design elements"). No POS tagger: closed word lists plus suffix rules,
so it is fast (thousands of captions per second) and never raises.
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


DETERMINERS = _words("""
    a an the this that these those its his her their our my your some any several many few each every
    both all another other others no various multiple such same most
""")
NUMBERS = _words("""
    one two three four five six seven eight nine ten eleven twelve dozen first second third fourth fifth
    sixth seventh eighth ninth tenth last
""")
PRONOUNS = _words("it he she they him them itself himself herself themselves it's")
POSSESSIVE_PRONOUNS = _words("its his her their")
PREPOSITIONS = _words("""
    at in on of to from with within inside into onto near by for over under above below behind beside
    besides between among across along around through toward towards upon against beneath underneath
    outside like about via throughout amid atop off up down out past beyond next
""")
CONJUNCTIONS = _words("and or but nor while whereas which who whom whose where when as than so yet & /")
AUXILIARIES = _words("""
    is are was were be been being am can could may might will would shall should must appears appear
    seems seem looks remains remain lies sits stands there's here's that's there here not also
""")
VERBS = _words("""
    has have had holds hold holding wears wearing shows showing depicts depicting features featuring
    contains containing includes including displays displaying carries carrying supports supporting
    surrounds surrounding consists consisting reads says reading saying labeled labelled written printed
    made
""")
# Open-class words that only say *where* the box is ("is located at", "with bounding box coordinates").
LOCATORS = _words("""
    located positioned situated placed found seen visible present shown depicted centered centred
    occupying occupies occupy occupied covering covers cover covered spanning spans span spanned
    extending extends extend running runs stretching stretches ranging ranges reaching reaches going
    goes starting contained enclosed defined marked indicated represented given denoted outlined bounded
    approximately roughly exactly bounding coordinates coordinate coords bounds boundaries boundary
    upward upwards downward downwards outward outwards inward inwards sideways respectively bbox almost
    encompasses encompassing fills filling fill dominates dominating
""")
POSITION_VERBS = _words("located positioned situated placed")
POSTURE_VERBS = _words("standing sitting lying resting hanging perched seated mounted")
LOCATION_NOUNS = _words("""
    side sides corner corners center centre middle top bottom left right edge edges background
    foreground midground image frame picture photo photograph scene view quadrant part parts portion
    portions half section distance horizon front back rear end ends upper lower far near central mid
    inner outer majority rest entire whole most forefront
""")
GENERIC_PLACES = _words("area areas region regions space location position extent")
PLACE_MODIFIERS = _words("""
    left right top bottom upper lower center centre middle far central mid front back rear inner outer
    entire whole image further large larger small smaller significant big vast considerable substantial
    vertical horizontal surrounding overall
""")
PARTITIVES = _words("""
    piece pieces pair pairs group groups stack stacks cluster clusters bunch bunches set sets row rows
    pile piles slice slices couple number collection series line lines variety kind kinds type types
    sort patch patches flock herd crowd bundle bundles bouquet handful lot lots plenty array assortment
    layer layers quantity quantities amount amounts mass
""")
FOCUS_NOUNS = _words("focus subject centerpiece centrepiece highlight")
NOUNS_IN_EST = _words("chest forest nest vest crest west guest interest")
NOUNS_IN_LY = _words("""
    assembly family belly lily jelly fly butterfly dragonfly firefly ally rally gully holly anomaly
    supply reply doily bully italy
""")
NOUNS_IN_ING = _words("""
    building buildings ceiling lettering writing clothing painting paintings drawing drawings railing
    railings opening openings awning ring rings wing wings string strings king thing things something
    spring swing sling siding fencing paneling panelling molding moulding lighting bedding icing
    frosting filling topping stuffing marking markings carving carvings engraving sibling seedling
    dumpling pudding wedding sapling ending landing crossing housing casing tubing piping plumbing
    wiring netting padding lining clearing sailing evening morning
""")
CAN_MODIFIERS = _words("trash garbage soda tin paint watering beer oil spray metal aluminum")
STOPWORDS = DETERMINERS | NUMBERS | PRONOUNS | PREPOSITIONS | CONJUNCTIONS | AUXILIARIES | VERBS
_TAIL_FILLER = STOPWORDS | LOCATORS
_DETERMINING = DETERMINERS | NUMBERS | POSSESSIVE_PRONOUNS
_DEFINITE = _words("the this that its his her their")
_COPULAS = _words("is are was were lies sits stands appears there's")

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*'?|[^\sa-z0-9]")
_MARKDOWN_RE = re.compile(r"[*_#`]+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens, markdown removed, curly quotes made straight."""
    return _TOKEN_RE.findall(_MARKDOWN_RE.sub(" ", text.translate(_QUOTES).lower()))


def _is_word(tok: str) -> bool:
    return tok[:1].isalnum()


def _is_adverb(tok: str) -> bool:
    return tok.endswith("ly") and len(tok) > 4 and tok not in NOUNS_IN_LY


def _is_content(tok: str) -> bool:
    return _is_word(tok) and tok not in STOPWORDS and not tok.isdigit()


def _is_participle(tok: str) -> bool:
    if tok in NOUNS_IN_ING or "-" in tok:
        return False
    return tok.endswith("ing") or (tok.endswith("ed") and len(tok) > 4)


def _is_verb_form(toks: list[str], i: int) -> bool:
    """An -ing/-ed word after an auxiliary, pronoun or comma is a verb ('is walking'), except 'there is X'."""
    if i == 0 or not _is_participle(toks[i]):
        return False
    prev = toks[i - 1]
    if prev in ("there's", "here's") or (i > 1 and toks[i - 2] in ("there", "here")):
        return False
    if prev == ",":  # ", leading upwards" is a verb, ", textured area" an adjective
        return i + 1 == len(toks) or not _is_content(toks[i + 1])
    return prev in AUXILIARIES | PRONOUNS


def _is_np_word(toks: list[str], i: int) -> bool:
    if toks[i] in ("can", "cans"):  # "the can", "a trash can" (a noun), not "parts can be seen"
        return i > 0 and (toks[i - 1] in DETERMINERS or toks[i - 1] in CAN_MODIFIERS)
    return _is_content(toks[i]) and not _is_verb_form(toks, i)


def _run_start(toks: list[str], end: int) -> int:
    """Start index of the run of noun-phrase words ending just before ``end``."""
    i = end
    while i > 0 and _is_np_word(toks, i - 1):
        i -= 1
        if toks[i].endswith(("'s", "'")) and i < end - 1:
            return i + 1  # "player's right shoe": the possessor is not part of the tag
    return i


def _skip_back(toks: list[str], i: int, allowed: frozenset[str], possessors: bool = False) -> int:
    def skippable(tok: str) -> bool:
        return tok in allowed or _is_adverb(tok) or (possessors and tok.endswith(("'s", "s'")))

    while i > 0 and skippable(toks[i - 1]):
        i -= 1
    return i


def _is_place_word(word: str) -> bool:
    parts = word.split("-")
    return word in LOCATION_NOUNS or (
        len(parts) > 1 and all(p in LOCATION_NOUNS | PLACE_MODIFIERS for p in parts)
    )


def _is_place(words: list[str]) -> bool:
    """'the center', 'lower left quadrant', 'right-center', 'image space', 'an area' (not 'a cement area')."""
    if not words:
        return False
    if _is_place_word(words[-1]):
        return True
    return words[-1] in GENERIC_PLACES and all(w in LOCATION_NOUNS | PLACE_MODIFIERS for w in words[:-1])


def is_pure_place(tag: str) -> bool:
    """A tag that only names a place ('top left corner'), so the box's entity is named elsewhere."""
    words = tag.split()
    return len(words) > 1 and _is_place(words) and any(w in PLACE_MODIFIERS for w in words)


def _strip_tail(toks: list[str]) -> bool:
    """Drop trailing filler (closed-class/locator words, punctuation, quotes, verbs); True if it located."""
    located = False
    while toks:
        tok = toks[-1]
        noun_can = tok in ("can", "cans") and _is_np_word(toks, len(toks) - 1)
        if tok in PRONOUNS or tok in POSSESSIVE_PRONOUNS or noun_can:
            return located
        if tok == ")" and "(" in toks:  # a parenthetical right before the box: "Logo (Inner)"
            del toks[len(toks) - 1 - toks[::-1].index("(") :]
        elif tok == '"' and toks.count('"') >= 2:  # quoted text: 'a hat that reads "Hana Bank"'
            del toks[len(toks) - 2 - toks[-2::-1].index('"') :]
        elif tok in ("box", "boxes") and len(toks) > 1 and toks[-2] == "bounding":
            del toks[-2:]
            located = True
        elif tok in GENERIC_PLACES and len(toks) > 1 and toks[-2] in _DEFINITE:
            del toks[-2:]
            located = True
        elif tok in ("one", "ones"):  # "the left one [[b]]": drop the anaphor with its modifiers
            toks.pop()
            while toks and _is_content(toks[-1]):
                toks.pop()
        elif tok in _TAIL_FILLER or tok.isdigit() or not _is_word(tok) or _is_adverb(tok):
            located = located or tok in LOCATORS
            toks.pop()
        elif _is_verb_form(toks, len(toks) - 1):  # "a man is walking [[b]]", "can be identified [[b]]"
            toks.pop()
            located = True
        else:
            return located
    return located


def _strip_locative(toks: list[str], located: bool) -> bool:
    """Remove a trailing phrase that only says where the subject is (or predicates it); True if cut."""
    start = _run_start(toks, len(toks))
    if start == len(toks):
        return False
    head = toks[-1]
    before = _skip_back(toks, start, _DETERMINING, possessors=True)
    prev = toks[before - 1] if before > 0 else ""
    and_place = prev == "and" and is_pure_place(" ".join(toks[start:]))  # "to the left and further back"
    if _is_place(toks[start:]) and (prev in PREPOSITIONS | LOCATORS or and_place):
        del toks[before - 1 :]  # "... in the center of the image [[b]]", "occupying the majority"
        return True
    before = _coordination_start(toks, before)
    prev = toks[before - 1] if before > 0 else ""
    if prev in PREPOSITIONS:
        i = _skip_back(toks, before, PREPOSITIONS | DETERMINERS | LOCATION_NOUNS)
        anchors = AUXILIARIES | LOCATORS | POSTURE_VERBS if located else POSITION_VERBS
        if i > 0 and toks[i - 1] in anchors:
            del toks[i - 1 :]  # "a tree located to the right of the tractor [[b]]": the tree
            return True
    superlative = head.endswith("est") and head not in NOUNS_IN_EST
    if (
        (head in FOCUS_NOUNS or superlative)
        and start > 0
        and toks[start - 1] == "the"
        and prev in AUXILIARIES
    ):
        del toks[before - 1 :]  # "the car is the main focus [[b]]", "the third one is the smallest"
        return True
    return _strip_predicate(toks, start)


def _coordination_start(toks: list[str], i: int) -> int:
    """Start of 'the woman and (the) pitchers' when ``i`` starts its last conjunct."""
    while i > 1 and toks[i - 1] == "and" and _is_np_word(toks, i - 2):
        i = _skip_back(toks, _run_start(toks, i - 1), _DETERMINING)
    return i


def _strip_predicate(toks: list[str], start: int) -> bool:
    """'the necklace is thin and silver [[b]]' -> 'the necklace' (not after 'there is')."""
    i = _skip_back(toks, start, frozenset({"and", ","}))
    while i > 0 and _is_np_word(toks, i - 1):
        i = _skip_back(toks, i - 1, frozenset({"and", ","}))
    existential = i > 1 and toks[i - 2] in ("there", "here")  # "there are trees [[b]]" names the trees
    if i > 0 and toks[i - 1] in AUXILIARIES - {"there", "here"} and not existential:
        del toks[i - 1 :]
        return True
    return False


def _drop_comma_clause(toks: list[str], located: bool) -> bool:
    """'Her hair, styled in a wavy pattern, [is located at]': drop the participle/relative clause."""
    if not located or "," not in toks:
        return False
    comma = len(toks) - 1 - toks[::-1].index(",")
    clause = toks[comma + 1 :]
    first = clause[0] if clause else ""
    verb_clause = len(clause) == 1 or any(t in PREPOSITIONS for t in clause)  # not ", textured area"
    if first in ("which", "who", "that", "where") or (_is_participle(first) and verb_clause):
        del toks[comma:]
        return True
    return False


def _clean_words(words: list[str]) -> str:
    for k in range(1, len(words)):  # "objects resembling lines", "buttons stacked": the head comes first
        if _is_participle(words[k]) and (k == len(words) - 1 or words[k - 1].endswith("s")):
            words = words[:k]
            break
    kept = [w for w in words if not (w.isdigit() or _is_adverb(w) or w in LOCATORS)] or words
    return " ".join(w[:-2] if w.endswith("'s") else w.rstrip("'") for w in kept).strip()


def _noun_phrase(toks: list[str]) -> str:
    """The tag at the end of ``toks``: resolves 'X of Y' (partitives and places give Y, parts give X)."""
    start = _run_start(toks, len(toks))
    words = toks[start:]
    if start > 1 and toks[start - 1] == "and" and _is_np_word(toks, start - 2):  # "stems and leaves"
        start = _run_start(toks, start - 1)
        words = toks[start:]
    i = _skip_back(toks, start, _DETERMINING)
    if words and i > 0 and toks[i - 1] == "of":
        x_words = toks[_run_start(toks, i - 1) : i - 1]
        if x_words and x_words[-1] not in PARTITIVES and not _is_place(x_words):
            words = x_words
    return _clean_words(words)


def _second_predicate(toks: list[str]) -> bool:
    """'The pitcher is smaller with a handle and (is) positioned at [[b]]': the box is the subject's."""
    i = _skip_back(toks, len(toks), PREPOSITIONS | frozenset({":", ","}))
    if i == 0 or toks[i - 1] not in POSITION_VERBS:
        return False
    i = _skip_back(toks, i - 1, AUXILIARIES)
    return i > 0 and toks[i - 1] == "and"


def backward_tag(toks: list[str]) -> tuple[str, bool]:
    """(tag, refers_to_pronoun) for the tokens before a box group; ("", False) when nothing names it.

    ``toks`` is consumed (cut back in place).
    """
    if _second_predicate(toks) and first_noun_phrase(toks):
        return first_noun_phrase(toks), False
    located = False
    for _ in range(16):  # every pass removes tokens, and real contexts need only a few passes
        located = _strip_tail(toks) or located
        if not toks:
            return "", False
        if toks[-1] in ("it", "them") and len(toks) > 1 and toks[-2] in PREPOSITIONS:
            del toks[-2:]  # "a cloth with dots on it [[b]]"
            continue
        if toks[-1] in PRONOUNS or toks[-1] in POSSESSIVE_PRONOUNS:
            return "", True
        if _strip_locative(toks, located):
            located = True
        elif not _drop_comma_clause(toks, located):
            break
    return _noun_phrase(toks), False


def _phrase_at(toks: list[str], j: int) -> str:
    """The noun phrase starting at ``j`` ('a small portion of a road sign' -> 'road sign')."""
    while j < len(toks) and toks[j] in _DETERMINING:
        j += 1
    k = j
    while k < len(toks) and _is_content(toks[k]) and toks[k] not in LOCATORS:
        k += 1
    words = toks[j:k]
    if words and k < len(toks) and toks[k] == "of" and (words[-1] in PARTITIVES or _is_place(words)):
        return _phrase_at(toks, k + 1) or _clean_words(words)
    return _clean_words(words)


def forward_tag(toks: list[str]) -> str:
    """Tokens after a box: '[[b]]: A person sitting' or '[[b]], are two design elements' -> the phrase."""
    if toks and toks[0] == ":":
        return first_noun_phrase(toks[1:])
    if len(toks) > 1 and toks[0] == "," and toks[1] in DETERMINERS:  # "[[b]], a flag is visible"
        return _phrase_at(toks, 1)
    for i, tok in enumerate(toks[:14]):
        if tok in (".", "!", "?", ":"):
            return ""
        if tok in _COPULAS:  # "is a tree", "are two design elements" (not "is bright")
            has_determiner = i + 1 < len(toks) and toks[i + 1] in _DETERMINING
            existential = i > 0 and toks[i - 1] == "there"  # "[[b]], there are fan-shaped tentacles"
            return _phrase_at(toks, i + 1) if has_determiner or existential else ""
    return ""


def first_noun_phrase(toks: list[str]) -> str:
    """The subject of a sentence: its first noun phrase ("" when that is a pronoun)."""
    while toks and toks[0] in PREPOSITIONS and "," in toks[:12]:
        toks = toks[toks.index(",") + 1 :]  # "Behind the doll, to the left, two chairs ..."
    i = 0
    while i < len(toks) and not _is_np_word(toks, i):
        if toks[i] in PRONOUNS:
            return ""
        i += 1
    j = i
    while j < len(toks) and _is_np_word(toks, j) and not toks[j].endswith("'s"):
        j += 1
    if j < len(toks) and toks[j].endswith("'s"):
        return first_noun_phrase(toks[j + 1 :])
    if all(w in LOCATORS | GENERIC_PLACES | {"box", "boxes"} for w in toks[i:j]):
        return ""  # "Its bounding box is [[b]]": the subject is in an earlier sentence
    return _clean_words(toks[i:j])


def is_trivial(toks: list[str]) -> bool:
    """Only punctuation and conjunctions: '[[a]] and [[b]]' (the second group shares the first's tag)."""
    return all(not _is_word(t) or t in ("and", "or", "as", "well", "respectively") for t in toks)
