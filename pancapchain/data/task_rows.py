"""How a scene's task examples become training rows: the rules of ``data.stage_rates`` and ``data.chain_rows``.

``chain_rows: stages`` (the paper's) trains every chain stage as its own single-turn row, each with the image.
``chain_rows: conversation`` joins a scene's localize, label and caption examples into one row of three turns::

    USER: <image> localize prompt      ASSISTANT: stage-1 boxes
    USER: label followup               ASSISTANT: stage-2 tags and boxes
    USER: caption followup             ASSISTANT: the caption

Every answer is supervised. The image's tokens are in the row once instead of three times, and the box lists
the stage-2 and caption prompts would restate are the earlier answers, so a scene costs about half the tokens
(docs/learning_quality.md). Stage 3 stays a single-turn row: its prompt lists only the known part of the scene.
The chain asks the same turns at inference (:class:`pancapchain.infer.chain.PancapChain`), with the items it has
(stage-3 finds merged in) as the earlier answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from pancapchain.constants import TASKS
from pancapchain.data.prompts import PromptSet
from pancapchain.data.stages import StageExample
from pancapchain.model.chat import FollowUp

CHAIN_ROWS = ("stages", "conversation")
CONVERSATION_TURNS = ("localize", "label", "caption")  # in turn order; the last one is the row's answer


def rate_problems(stages: Mapping[str, float], rates: Mapping[str, float | None]) -> list[str]:
    """Problems of ``data.stage_rates`` against ``data.stages`` (empty when fine)."""
    bad = {t: r for t, r in rates.items() if t not in TASKS or not isinstance(r, (int, float)) or r <= 0}
    if bad:
        return [f"data.stage_rates {bad}: keys are tasks {list(TASKS)}, values numbers > 0 (to drop a task, "
                "set its data.stages weight to 0)"]
    idle = sorted(t for t in rates if stages.get(t, 0.0) <= 0)
    unset = " ".join(f"data.stage_rates.{t}=null" for t in idle)
    return [f"data.stage_rates sets {idle}, which data.stages does not train (weight 0): unset the rate ({unset}) "
            "or give the task a weight"] if idle else []


def chain_rows_problem(chain_rows: str, stages: Mapping[str, float], rates: Mapping[str, float | None]) -> str | None:
    """Why ``data.chain_rows`` cannot be used with these stage weights and rates, or None."""
    if chain_rows not in CHAIN_ROWS:
        return f"chain_rows must be one of {CHAIN_ROWS}, not {chain_rows!r}"
    if chain_rows == "stages":
        return None
    weights = [stages.get(t, 0.0) for t in CONVERSATION_TURNS]
    if len(set(weights)) != 1:  # all 0 is fine: no chain stage is trained (e.g. direct captioning alone)
        return (f"chain_rows=conversation trains {list(CONVERSATION_TURNS)} as one row: give them one equal weight "
                f"in data.stages (now {weights}), or use chain_rows=stages")
    rated = sorted(t for t in CONVERSATION_TURNS if rates.get(t) is not None)
    if rated:
        return (f"chain_rows=conversation writes {list(CONVERSATION_TURNS)} once per scene: unset their "
                f"data.stage_rates {rated} or use chain_rows=stages")
    return None


def as_conversation(examples: Sequence[StageExample], prompts: PromptSet) -> list[StageExample]:
    """A scene's examples with its localize, label and caption examples joined into one caption row whose prompt
    is a :class:`FollowUp` (module docstring); other examples are kept as they are. A scene that lacks one of the
    three (no entities: no stage 1 or 2) keeps its single-turn examples."""
    by_stage = {ex.stage: ex for ex in examples}
    if not all(t in by_stage for t in CONVERSATION_TURNS):
        return list(examples)
    localize, label, caption = (by_stage[t] for t in CONVERSATION_TURNS)
    history = ((localize.prompt, localize.target), (prompts.followup("label"), label.target))
    joined = replace(caption, prompt=FollowUp(prompts.followup("caption"), history))
    return [joined, *(ex for ex in examples if ex.stage not in CONVERSATION_TURNS)]
