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

A bad command prints one ``error:`` line and the session goes on (its state is kept); so does an internal
error, reported as such. Ctrl-C stops the running command in an interactive session.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from PIL import Image

from pancapchain.data.stage_parse import StageItem
from pancapchain.errors import is_user_error, one_line
from pancapchain.infer.chain import PancapChain
from pancapchain.infer.generation import GenerationOptions
from pancapchain.infer.session import ChainSession, SessionError

# A command that cannot be carried out; the REPL prints it and waits for the next one.
ChatError = SessionError


class ChatSession(ChainSession):
    """Text commands over a ``ChainSession`` (which holds the state and the edit semantics)."""

    HINTS = {"image": "use `image PATH`", "next": "use `next`",
             "done": "`save FILE`, `redo`, or load another image"}

    def __init__(
        self, chain: PancapChain, options: GenerationOptions | None = None, out: TextIO = sys.stdout,
        debug: bool = False,
    ):
        super().__init__(chain, options)
        self.debug = debug
        self.out = out

    # ------------------------------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def show(self) -> None:
        stage = self.stage
        out = self.state.outputs[stage]
        flags = " (truncated)" if out.truncated else ""
        flags += " (edited)" if out.edited else ""
        self.say(f"[{self.stage_index + 1}/4 {self.stage}]{flags}")
        if self.stage == "caption":
            self.say(self.chain.tag_first("caption", out.raw))  # the paper's layout, however the model writes it
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
            self.load(img, Path(path).stem)
        self.say(f"loaded {path} ({self.state.width}x{self.state.height}); `next` runs stage 1 (localize)")

    def cmd_next(self) -> None:
        self.next_stage()
        self.show()

    def cmd_redo(self, mode: str = "") -> None:
        options = self.options
        if mode == "sample":
            options = replace(self.options, do_sample=True, seed=self.options.seed + 1)
            self.options = options
        self.regenerate(options=options)
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
        self.set_text(" ".join(words))
        self.show()

    def cmd_remove(self, index: str) -> None:
        items = self.items()
        del items[self._index(index, items)]
        self._replace(items)

    def cmd_save(self, path: str) -> None:
        if self.state is None:
            raise ChatError("nothing to save: no image loaded")
        target = Path(path)
        if target.is_dir():
            raise ChatError(f"cannot save to {path}: it is a folder; give a file name")
        if not target.parent.is_dir():
            raise ChatError(f"cannot save to {path}: folder {target.parent} does not exist (create it first)")
        self.save(path)
        self.say(f"saved {path}")

    def _replace(self, items: list[StageItem]) -> None:
        self.replace_items(items)
        self.show()

    @staticmethod
    def _index(text: str, items: list) -> int:
        if not text.isdigit() or int(text) >= len(items):
            raise ChatError(f"no item {text!r}: items are 0..{len(items) - 1}")
        return int(text)

    @staticmethod
    def _box(text: str):
        return ChainSession.parse_box(text, "chat")

    # ---------------------------------------------------------------------------------------- loop
    def handle(self, line: str) -> bool:
        """Run one command line; returns False on ``quit``."""
        try:
            words = shlex.split(line)
        except ValueError as err:  # e.g. an unbalanced quote
            raise ChatError(f"cannot read the command ({err}); close the quote or drop it") from None
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
        """Read and run commands until ``quit`` or end of input; 1 when a piped session had errors."""
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
                    return 0 if errors == 0 or interactive else 1
            except KeyboardInterrupt:
                if not interactive:
                    raise
                self.say("interrupted; the session is kept (`quit` to leave)")
            except Exception as err:  # the session survives every command, its state is kept
                errors += 1
                self._report(err)

    def _report(self, err: Exception) -> None:
        if self.debug:
            traceback.print_exception(err, file=self.out)
        if is_user_error(err):
            self.say(f"error: {one_line(err)}")
        else:
            self.say(f"internal error (a pancapchain bug; the session is kept): {type(err).__name__}: {err}")
