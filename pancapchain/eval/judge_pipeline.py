"""The official PancapScore judge protocol, in both directions, for a batch of images.

Per image (the official steps 1-9; steps 1-2 only need the GT):

    wave 1  gt_content     = extract(GT caption)            pred_content   = extract(pred caption)
    wave 2  gt_questions   = questions(GT caption, ...)     pred_questions = questions(pred caption, ...)
    wave 3  pred_answers   = answer(pred caption, GT questions rewritten in pred entity IDs)
            gt_answers     = answer(GT caption, pred questions rewritten in GT entity IDs)

The rewriting matches the asking side's entities (from its question lines) to the answering side's
content with the official matcher; questions on unmatched entities are not asked, global ones always are.
Each wave is one batched pass over all images, with every response cached per image.

Scores (official eval_alldims): tag / location from matching GT-question entities to pred-content
entities; attribute / relation / global recall = sum of pair scores of ``pred_answers`` / number of GT
items of that kind; precision = sum over ``gt_answers`` / number of those answer lines (0 when the pred
content has no item of that kind); a GT without items of a kind scores 0 on it. One deliberate
difference: only answer lines whose ID was asked (once per ID) are counted; the rest count as invalid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pancapchain.eval.content import (
    Content,
    format_attribute,
    format_global,
    format_relation,
    parse_content,
    rename_refs,
)
from pancapchain.eval.embed import Embedder
from pancapchain.eval.judge import JudgeBackend, JudgeCache, JudgeRequest, run_cached
from pancapchain.eval.judge_prompts import JudgePrompts
from pancapchain.eval.matching import (
    OFFICIAL,
    EntityMatch,
    MatchConfig,
    TaggedEntity,
    entity_layout,
    match_entities,
)
from pancapchain.eval.scores import PRF, ZERO, ImageResult, answer_pair_score

ITEM_KINDS = {"attr": "attribute", "rel": "relation", "global": "global"}


@dataclass(frozen=True)
class JudgeImage:
    """Captions of one image, boxes already in normalized ``[[..]]`` form."""

    id: str
    gt_caption: str
    pred_caption: str


@dataclass
class Transfer:
    """Questions of one side rewritten for the other side's caption, and the IDs asked per kind."""

    lines: list[str]
    asked: dict[str, set[int]] = field(default_factory=lambda: {k: set() for k in ITEM_KINDS.values()})
    match: EntityMatch | None = None
    layout: dict[str, list[dict]] = field(default_factory=dict)  # entity_layout of the match (asking = rows)


def tagged_entities(content: Content) -> tuple[list[str], list[TaggedEntity]]:
    refs = list(content.entities)
    return refs, [TaggedEntity(content.entities[r], content.locations.get(r)) for r in refs]


def match_contents(asking: Content, answering: Content, embedder: Embedder | None, config: MatchConfig):
    """Official matching of the asking side's entities (rows) to the answering side's (columns)."""
    a_refs, a_ents = tagged_entities(asking)
    b_refs, b_ents = tagged_entities(answering)
    match = match_entities(a_ents, b_ents, embedder, config)
    return match, {a_refs[i]: b_refs[j] for i, j in match.pairs}


def transfer_questions(
    asking: Content, answering: Content, embedder: Embedder | None, config: MatchConfig
) -> Transfer:
    """Answering side's entity/location lines, then the asking side's questions in its entity IDs."""
    match, emap = match_contents(asking, answering, embedder, config)
    out = Transfer(answering.context_lines(), match=match,
                   layout=entity_layout(match, tagged_entities(asking)[1], tagged_entities(answering)[1]))
    next_id = answering.next_line_id()
    for _, ref, text in asking.attributes:
        if ref in emap:
            out.lines.append(format_attribute(next_id, emap[ref], rename_refs(text, emap)))
            out.asked["attribute"].add(next_id)
            next_id += 1
    for _, e1, e2, text in asking.relations:
        if e1 in emap and e2 in emap:
            out.lines.append(format_relation(next_id, emap[e1], emap[e2], rename_refs(text, emap)))
            out.asked["relation"].add(next_id)
            next_id += 1
    for _, text in asking.globals:
        out.lines.append(format_global(next_id, text))
        out.asked["global"].add(next_id)
        next_id += 1
    return out


def _answer_scores(answers: Content, kind: str, asked: set[int]) -> tuple[list[float], int]:
    """Pair scores of answer lines of ``kind`` whose ID was asked (first answer per ID); + #ignored."""
    if kind == "attribute":
        lines = [(i, text) for i, _, text in answers.attributes]
    elif kind == "relation":
        lines = [(i, text) for i, _, _, text in answers.relations]
    else:
        lines = list(answers.globals)
    scores, used, ignored = [], set(), 0
    for line_id, text in lines:
        if line_id in asked and line_id not in used:
            used.add(line_id)
            scores.append(answer_pair_score(text))
        else:
            ignored += 1
    return scores, ignored


def _n_items(content: Content, kind: str) -> int:
    return len({"attribute": content.attributes, "relation": content.relations, "global": content.globals}[kind])


def score_judged_image(
    image_id: str, responses: dict[str, str], transfers: dict[str, Transfer], match: EntityMatch
) -> ImageResult:
    """Five PRFs of one image from its six responses and the two question transfers."""
    gt_q = parse_content(responses["gt_questions"], "questions")
    pred_c = parse_content(responses["pred_content"], "content")
    pred_ans = parse_content(responses["pred_answers"], "answers")
    gt_ans = parse_content(responses["gt_answers"], "answers")
    scores = {"tag": match.tag, "loc": match.loc}
    counts = {"gt_entities": match.n_gt, "pred_entities": match.n_pred, "matched": len(match.pairs),
              "gt_boxes": match.n_gt_boxes, "pred_boxes": match.n_pred_boxes, "loc_matched": len(match.loc_ok)}
    ignored = 0
    for dim, kind in ITEM_KINDS.items():
        n_gt = _n_items(gt_q, kind)
        recall_scores, ign_r = _answer_scores(pred_ans, kind, transfers["gt_to_pred"].asked[kind])
        precision_scores, ign_p = _answer_scores(gt_ans, kind, transfers["pred_to_gt"].asked[kind])
        ignored += ign_r + ign_p
        counts[f"gt_{kind}s"] = n_gt
        counts[f"pred_{kind}s"] = _n_items(pred_c, kind)
        if n_gt == 0:
            scores[dim] = ZERO
            continue
        recall = sum(recall_scores) / n_gt
        has_pred = _n_items(pred_c, kind) > 0 and precision_scores
        precision = sum(precision_scores) / len(precision_scores) if has_pred else 0.0
        scores[dim] = PRF.from_pr(precision, recall)
    dropped = {step: parse_content(text, _mode(step)).n_dropped for step, text in responses.items()}
    counts["judge_lines_dropped"] = sum(dropped.values()) + ignored
    result = ImageResult(image_id, scores, counts=counts)
    if counts["judge_lines_dropped"]:
        detail = ", ".join(f"{k} {v}" for k, v in dropped.items() if v)
        result.warnings.append(
            f"{counts['judge_lines_dropped']} judge line(s) malformed/invalid/unasked ({detail or 'answers'})"
        )
    if match.n_gt == 0:
        result.warnings.append("gt questions list no entity (tag/loc = 1 only if the prediction has none)")
    return result


def _mode(step: str) -> str:
    return "answers" if step.endswith("answers") else "questions" if step.endswith("questions") else "content"


def run_judge(
    images: list[JudgeImage],
    backend: JudgeBackend,
    prompts: JudgePrompts,
    embedder: Embedder | None,
    cache: JudgeCache | None = None,
    match_config: MatchConfig = OFFICIAL,
) -> tuple[list[ImageResult], dict[str, int]]:
    """Judge-mode results per image (input order) and call statistics {"calls", "requests"}.

    ``requests`` counts the prompts that needed an answer, ``calls`` those that were not in the cache.
    """
    stats = {"calls": 0, "requests": 0}
    resp: dict[str, dict[str, str]] = {img.id: {} for img in images}

    def wave(requests: list[JudgeRequest], desc: str, needed: list[bool]) -> None:
        """Run the needed requests; the others (empty caption, nothing to ask) get an empty response."""
        asked = [r for r, n in zip(requests, needed) if n]
        texts, calls = run_cached(backend, asked, cache, desc=desc)
        stats["calls"] += calls
        stats["requests"] += len(asked)
        for req in requests:
            resp[req.image_id][req.step] = ""
        for req, text in zip(asked, texts):
            resp[req.image_id][req.step] = text

    def caption(img: JudgeImage, side: str) -> str:
        return img.gt_caption if side == "gt" else img.pred_caption

    sides = [(img, side) for img in images for side in ("gt", "pred")]
    wave([JudgeRequest(img.id, f"{side}_content", prompts.extract_prompt(caption(img, side))) for img, side in sides],
         "judge: extract content", [bool(caption(img, side).strip()) for img, side in sides])
    content_lines = {(img.id, side): _protocol_lines(resp[img.id][f"{side}_content"]) for img, side in sides}
    wave([JudgeRequest(img.id, f"{side}_questions", prompts.questions_prompt(caption(img, side),
                                                                              content_lines[img.id, side]))
          for img, side in sides], "judge: generate questions", [bool(content_lines[k.id, s]) for k, s in sides])
    transfers: dict[str, dict[str, Transfer]] = {}
    for img in images:
        r = resp[img.id]
        gt_q, pred_q = parse_content(r["gt_questions"], "questions"), parse_content(r["pred_questions"], "questions")
        gt_c, pred_c = parse_content(r["gt_content"], "content"), parse_content(r["pred_content"], "content")
        transfers[img.id] = {
            "gt_to_pred": transfer_questions(gt_q, pred_c, embedder, match_config),
            "pred_to_gt": transfer_questions(pred_q, gt_c, embedder, match_config),
        }
    answer_requests, needed = [], []
    for img in images:
        for step, cap, direction in (("pred_answers", img.pred_caption, "gt_to_pred"),
                                     ("gt_answers", img.gt_caption, "pred_to_gt")):
            transfer = transfers[img.id][direction]
            answer_requests.append(JudgeRequest(img.id, step, prompts.answer_prompt(cap, transfer.lines)))
            needed.append(bool(cap.strip()) and any(transfer.asked.values()))
    wave(answer_requests, "judge: answer questions", needed)
    results = [
        score_judged_image(img.id, resp[img.id], transfers[img.id], transfers[img.id]["gt_to_pred"].match)
        for img in images
    ]
    for img, result in zip(images, results):
        result.entities = transfers[img.id]["gt_to_pred"].layout
    return results, stats


def _protocol_lines(text: str) -> list[str]:
    """The response lines that look like protocol lines (chatter around them is not passed on)."""
    from pancapchain.eval.content import LINE_RE

    return [line.strip() for line in text.splitlines() if LINE_RE.match(line.replace("_", " "))]
