"""One image through the chain, stage by stage, with edits in between (shared by ``chat`` and ``serve``).

``pancapchain chat`` (text commands) and ``pancapchain serve`` (the web demo) both drive a ``ChainSession``,
so the edit semantics exist once:

- the image is encoded once (``load``); every stage reuses the features;
- stage k's prompt is built from the parsed items of the stages before it (``PancapChain.stage_prompt``);
- an edit of stage k (new items, or new raw text) marks it ``edited`` and drops every later stage: those are
  generated again from the edit (``chat`` waits for ``next``; the web demo reruns them at once, ``rerun_to``);
- regenerating a stage (greedy, or sampled with a seed) also drops the later stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from PIL import Image

from pancapchain.constants import STAGES
from pancapchain.data.io import atomic_write_json
from pancapchain.data.schema import Box, SampleError, validate_box
from pancapchain.data.stage_parse import StageItem
from pancapchain.infer.chain import ChainState, PancapChain, StageOutput
from pancapchain.infer.generation import GenerationOptions


class SessionError(ValueError):
    """A user action that cannot be carried out; the front end shows the message and keeps the session."""


class ChainSession:
    """The chain's state for one image and the actions a user can take on it.

    ``HINTS`` end the error messages; a front end overrides them with its own words (a command, a button).
    """

    HINTS = {
        "image": "load an image first",
        "next": "run the next stage first",
        "done": "regenerate a stage, edit one, or load another image",
    }

    def __init__(self, chain: PancapChain, options: GenerationOptions | None = None):
        self.chain = chain
        self.options = options or GenerationOptions()
        self.state: ChainState | None = None
        self.features = None  # the image features of ``state`` (Generator.encode), computed once per image
        self.stage_index = -1  # index in STAGES of the last stage that ran

    # ----------------------------------------------------------------------------------- queries
    @property
    def stage(self) -> str:
        """The last stage that ran (the one edits and ``regenerate`` apply to by default)."""
        if self.state is None:
            raise SessionError(f"no image loaded: {self.HINTS['image']}")
        if self.stage_index < 0:
            raise SessionError(f"no stage has run yet: {self.HINTS['next']}")
        return STAGES[self.stage_index]

    @property
    def done(self) -> bool:
        return self.stage_index == len(STAGES) - 1

    def output(self, stage: str | None = None) -> StageOutput:
        stage = self._ran(stage)
        return self.state.outputs[stage]

    def items(self, stage: str | None = None) -> list[StageItem]:
        return list(self.output(stage).items)

    def result(self) -> dict:
        """The session as JSON (``chat``'s ``save`` format): the chain result plus the edited stages."""
        if self.state is None:
            raise SessionError(f"nothing to save: no image loaded: {self.HINTS['image']}")
        out = self.chain.result(self.state)
        out["edited_stages"] = [s for s, o in self.state.outputs.items() if o.edited]
        return out

    def save(self, path) -> None:
        atomic_write_json(path, self.result())

    # ----------------------------------------------------------------------------------- actions
    def load(self, image: Image.Image, image_id: str) -> None:
        """Start over with ``image``: encode it once; no stage has run."""
        self.state = ChainState(image_id, image.convert("RGB"))
        self.features = self.chain.encode([self.state])
        self.stage_index = -1

    def next_stage(self) -> StageOutput:
        """Generate the stage after the last one that ran."""
        if self.state is None:
            raise SessionError(f"no image loaded: {self.HINTS['image']}")
        if self.done:
            raise SessionError(f"all four stages are done: {self.HINTS['done']}")
        self.stage_index += 1
        return self._generate(self.options)

    def rerun_to(self, index: int) -> None:
        """Generate the stages after the last one that ran, up to ``STAGES[index]`` included."""
        while self.stage_index < min(index, len(STAGES) - 1):
            self.next_stage()

    def regenerate(self, stage: str | None = None, options: GenerationOptions | None = None) -> StageOutput:
        """Generate ``stage`` again (default: the last one) with ``options``; later stages are dropped."""
        self._rewind(self._ran(stage))
        return self._generate(options or self.options)

    def sampling_options(self, seed: int) -> GenerationOptions:
        """The session's options with sampling switched on at ``seed``."""
        return replace(self.options, do_sample=True, seed=int(seed))

    def replace_items(self, items: Sequence[StageItem], stage: str | None = None) -> StageOutput:
        """A user's items for ``stage`` (default: the last one); its raw text is rewritten from them."""
        stage = self.editable_stage(stage)
        self._rewind(stage)
        return self.chain.set_items(self.state, stage, list(items))

    def set_text(self, text: str, stage: str | None = None) -> StageOutput:
        """A user's raw output for ``stage`` in the model's format, parsed like generated text."""
        stage = self.editable_stage(stage)
        self._rewind(stage)
        prompt = self.state.outputs[stage].prompt
        return self.chain.set_output(self.state, stage, text, prompt, edited=True)

    @staticmethod
    def parse_box(text: str, where: str = "box") -> Box:
        """``"x1,y1,x2,y2"`` normalized to [0, 1] with x1 < x2 and y1 < y2, or a SessionError saying why not."""
        try:
            box = validate_box([float(v) for v in text.split(",")], where, "box")
        except (ValueError, SampleError) as err:
            raise SessionError(f"bad box {text.strip()!r}: {getattr(err, 'problem', err)}") from None
        if box[0] >= box[2] or box[1] >= box[3]:
            raise SessionError(f"bad box {text.strip()!r}: needs x1 < x2 and y1 < y2 (it has no area)")
        return box

    # ----------------------------------------------------------------------------------- helpers
    def _ran(self, stage: str | None) -> str:
        """``stage`` checked to have run (default: the last stage that ran)."""
        current = self.stage
        if stage is None:
            return current
        if stage not in STAGES:
            raise SessionError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
        if STAGES.index(stage) > self.stage_index:
            raise SessionError(f"stage {stage} has not run yet (the last one is {current})")
        return stage

    def editable_stage(self, stage: str | None) -> str:
        stage = self._ran(stage)
        if stage == "caption":
            raise SessionError("the caption is free text: regenerate it, or edit the stages before it")
        return stage

    def _rewind(self, stage: str) -> None:
        """Make ``stage`` the last stage that ran: every later output is dropped."""
        self.stage_index = STAGES.index(stage)
        for later in STAGES[self.stage_index + 1 :]:
            self.state.outputs.pop(later, None)
        if self.stage_index < len(STAGES) - 1:
            self.state.masks = []

    def _generate(self, options: GenerationOptions) -> StageOutput:
        stage = self.stage
        for later in STAGES[self.stage_index :]:
            self.state.outputs.pop(later, None)
        self.chain.run_stage(stage, [self.state], self.features, options)
        return self.state.outputs[stage]
