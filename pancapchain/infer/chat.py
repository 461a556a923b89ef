"""``pancapchain chat``: run the chain one stage at a time; look at, edit or redo each stage before the next.

Commands (one per line; works interactively and from piped stdin)::

    image PATH                 load an image (starts over)
    next                       accept the current stage and run the next one
    show                       print the current stage's items
    edit N tag=TEXT            change item N's tag        edit N box=x1,y1,x2,y2  (normalized [0, 1])
    add [TAG] x1,y1,x2,y2      add an item                 remove N
    set TEXT                   replace the stage's output by TEXT (in the model's format; parsed like generated text)
    redo [sample]              generate the current stage again (greedy, or sampled with a new seed)
    save FILE                  write the session (every stage, raw and parsed, edits marked) as JSON
    help / quit
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from PIL import Image

from pancapchain.constants import STAGES
from pancapchain.data.boxes import read_user_box
from pancapchain.data.io import atomic_write_json
from pancapchain.data.schema import SampleError
from pancapchain.data.stages import StageItem
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import GenerationOptions


class ChatError(ValueError):
    """A command that cannot be carried out; the REPL prints it and waits for the next one."""


class ChatSession:
    def __init__(self, chain: PancapChain, options: GenerationOptions | None = None, out: TextIO = sys.stdout):
        self.chain = chain
        self.options = options or GenerationOptions()
        self.out = out
        self.state: ChainState | None = None
        self.features = None
        self.stage_index = -1  # index in STAGES of the last stage that ran

    # ------------------------------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @property
    def stage(self) -> str:
        if self.state is None:
            raise ChatError("no image loaded: use `image PATH`")
        if self.stage_index < 0:
            raise ChatError("no stage has run yet: use `next`")
        return STAGES[self.stage_index]

    def items(self) -> list[StageItem]:
        return list(self.state.outputs[self.stage].items)

    def show(self) -> None:
        out = self.state.outputs[self.stage]
        flags = " (truncated)" if out.truncated else ""
        flags += " (edited)" if out.edited else ""
        self.say(f"[{self.stage_index + 1}/4 {self.stage}]{flags}")
        if self.stage == "caption":
            self.say(out.raw)
        for i, item in enumerate(out.items):
            boxes = " ".join("[" + ", ".join(f"{v:.3f}" for v in b) + "]" for b in item.boxes)
            self.say(f"  {i}: {item.tag or '-'} {boxes}")
        if not out.items and self.stage != "caption":
            self.say("  (no items)")
        for frag in out.malformed:
            self.say(f"  ! could not parse: {frag!r}")

    # ----------------------------------------------------------------------------------- commands
    def cmd_image(self, path: str) -> None:
        with Image.open(path) as img:
            self.state = ChainState(Path(path).stem, img.convert("RGB"))
        self.features = self.chain.encode([self.state])
        self.stage_index = -1
        self.say(f"loaded {path} ({self.state.width}x{self.state.height}); `next` runs stage 1 (localize)")

    def cmd_next(self) -> None:
        if self.state is None:
            raise ChatError("no image loaded: use `image PATH`")
        if self.stage_index == len(STAGES) - 1:
            raise ChatError("all four stages are done: `save FILE`, `redo`, or load another image")
        self.stage_index += 1
        self._generate(self.options)

    def cmd_redo(self, mode: str = "") -> None:
        options = self.options
        if mode == "sample":
            options = replace(self.options, do_sample=True, seed=self.options.seed + 1)
            self.options = options
        self._generate(options)

    def _generate(self, options: GenerationOptions) -> None:
        stage = self.stage
        for later in STAGES[self.stage_index :]:
            self.state.outputs.pop(later, None)
        self.chain.generator.seed = options.seed
        self.chain.run_stage(stage, [self.state], self.features, options)
        self.show()

    def cmd_edit(self, index: str, assignment: str) -> None:
        items = self.items()
        i = self._index(index, items)
        key, _, value = assignment.partition("=")
        if key == "tag":
            items[i] = StageItem(value.strip() or None, items[i].boxes)
        elif key == "box":
            items[i] = StageItem(items[i].tag, (self._box(value),))
        else:
            raise ChatError("use `edit N tag=TEXT` or `edit N box=x1,y1,x2,y2`")
        self._replace(items)

    def cmd_add(self, *args: str) -> None:
        if not args:
            raise ChatError("use `add [TAG] x1,y1,x2,y2`")
        tag = " ".join(args[:-1]) or None
        if self.stage != "localize" and not tag:
            raise ChatError(f"stage {self.stage} items need a tag: `add TAG x1,y1,x2,y2`")
        self._replace(self.items() + [StageItem(tag if self.stage != "localize" else None, (self._box(args[-1]),))])

    def cmd_set(self, *words: str) -> None:
        if self.stage == "caption":
            raise ChatError("the caption is free text: `redo` it, or edit the stages before it")
        prompt = self.state.outputs[self.stage].prompt
        self.chain.set_output(self.state, self.stage, " ".join(words), prompt, edited=True)
        self.show()

    def cmd_remove(self, index: str) -> None:
        items = self.items()
        del items[self._index(index, items)]
        self._replace(items)

    def cmd_save(self, path: str) -> None:
        if self.state is None:
            raise ChatError("nothing to save: no image loaded")
        result = self.chain.result(self.state)
        result["edited_stages"] = [s for s, o in self.state.outputs.items() if o.edited]
        atomic_write_json(path, result)
        self.say(f"saved {path}")

    def _replace(self, items: list[StageItem]) -> None:
        if self.stage == "caption":
            raise ChatError("the caption is free text: `redo` it, or edit the stages before it")
        self.chain.set_items(self.state, self.stage, items)
        self.show()

    @staticmethod
    def _index(text: str, items: list) -> int:
        if not text.isdigit() or int(text) >= len(items):
            raise ChatError(f"no item {text!r}: items are 0..{len(items) - 1}")
        return int(text)

    @staticmethod
    def _box(text: str):
        try:
            return read_user_box(text, "box")
        except (ValueError, SampleError) as err:
            raise ChatError(f"bad box {text!r}: {err}") from None

    # ---------------------------------------------------------------------------------------- loop
    def handle(self, line: str) -> bool:
        """Run one command line; returns False on ``quit``."""
        words = shlex.split(line)
        if not words:
            return True
        name, args = words[0].lower(), words[1:]
        if name in ("quit", "exit"):
            return False
        if name == "help":
            self.say(__doc__.split("\n\n", 1)[1])
            return True
        handler = getattr(self, f"cmd_{name}", None) if name != "show" else (lambda: self.show())
        if handler is None:
            raise ChatError(f"unknown command {name!r}; `help` lists the commands")
        try:
            handler(*args)
        except TypeError:
            raise ChatError(f"wrong arguments for {name!r}; `help` lists the commands") from None
        return True

    def loop(self, stdin: TextIO = sys.stdin) -> int:
        interactive = stdin.isatty()
        errors = 0
        while True:
            if interactive:
                print("pancap> ", end="", file=self.out, flush=True)
            line = stdin.readline()
            if not line:
                return 0 if errors == 0 or interactive else 1
            try:
                if not self.handle(line):
                    return 0
            except (ChatError, OSError) as err:
                errors += 1
                self.say(f"error: {err}")
