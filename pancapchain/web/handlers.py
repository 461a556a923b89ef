"""The web demo's actions, one method per button, on plain Python values (gradio is wired in ``app.py``).

Every action takes the browser session's ``DemoSession`` (``None`` before the first action) and returns a
``Page``: the new session and everything the page shows. Actions run one at a time under one lock: the model
is shared by every browser session (a sampling seed is passed with each generate call). A user mistake (bad file, box out of
range, a stage that has not run) becomes a message on the page; an internal error becomes a one-line message
there too, with the traceback in the server log only.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pancapchain.constants import STAGES
from pancapchain.infer.chain import PancapChain
from pancapchain.infer.generation import GenerationOptions
from pancapchain.infer.session import ChainSession, SessionError
from pancapchain.web import view

log = logging.getLogger(__name__)


class DemoSession(ChainSession):
    """A browser session: the chain session plus a folder for its downloads (session JSON, overlay PNG)."""

    HINTS = {"image": "upload an image or pick an example", "next": 'press "next stage"',
             "done": "edit or regenerate a stage, or load another image"}

    def __init__(self, chain: PancapChain, options: GenerationOptions, folder: Path):
        super().__init__(chain, options)
        self.folder = folder


@dataclass
class Page:
    """What one action returns: the session and the page's contents (``None`` = nothing to show)."""

    session: DemoSession | None
    status: str
    stages: list[str] = field(default_factory=list)  # the stages that ran (the choices of the stage picker)
    stage: str | None = None  # the stage shown
    rows: list[list[str]] = field(default_factory=list)
    raw: str = ""
    picture: Image.Image | None = None
    caption: list[tuple[str, str | None]] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)
    session_json: str | None = None
    overlay_png: str | None = None


class DemoActions:
    """The demo's actions over one loaded chain; ``workdir`` holds the per-session download folders."""

    def __init__(self, chain: PancapChain, options: GenerationOptions, workdir: Path,
                 max_pixels: int = view.DEFAULT_MAX_PIXELS):
        self.chain, self.options, self.workdir, self.max_pixels = chain, options, Path(workdir), max_pixels
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------- actions
    def load_image(self, session: DemoSession | None, path: str | None) -> Page:
        return self._act(session, lambda s: self._load(s, view.open_upload(path, self.max_pixels),
                                                       Path(path).stem if path else "image"))

    def load_example(self, session: DemoSession | None, name: str | None) -> Page:
        return self._act(session, lambda s: self._load(s, *view.example_image(name or "")))

    def next_stage(self, session: DemoSession | None) -> Page:
        def act(s: DemoSession) -> str:
            out = s.next_stage()
            return f"ran stage {s.stage_index + 1}/4 ({out.stage}){_notes(out)}"

        return self._act(session, act)

    def run_all(self, session: DemoSession | None) -> Page:
        def act(s: DemoSession) -> str:
            first = s.stage_index + 1
            if s.state is not None and s.done:
                raise SessionError(f"all four stages are done: {s.HINTS['done']}")
            s.rerun_to(len(STAGES) - 1)
            return f"ran {', '.join(STAGES[first:])}"

        return self._act(session, act)

    def regenerate(self, session: DemoSession | None, stage: str | None, seed) -> Page:
        def act(s: DemoSession) -> str:
            reached = s.stage_index
            out = s.regenerate(stage or None, s.sampling_options(_seed(seed)))
            s.rerun_to(reached)
            return f"stage {out.stage} sampled with seed {_seed(seed)}{_rerun_note(s, out.stage)}"

        return self._act(session, act)

    def apply_table(self, session: DemoSession | None, stage: str | None, rows: Sequence[Sequence] | None) -> Page:
        def act(s: DemoSession) -> str:
            target = s.editable_stage(stage or None)
            items = view.rows_to_items(rows or [], target)
            reached = s.stage_index
            s.replace_items(items, target)
            s.rerun_to(reached)
            return f"stage {target} edited ({len(items)} items){_rerun_note(s, target)}"

        return self._act(session, act)

    def apply_text(self, session: DemoSession | None, stage: str | None, text: str | None) -> Page:
        def act(s: DemoSession) -> str:
            target = s.editable_stage(stage or None)
            reached = s.stage_index
            out = s.set_text(text or "", target)
            s.rerun_to(reached)
            return f"stage {target} rewritten ({len(out.items)} items){_notes(out)}{_rerun_note(s, target)}"

        return self._act(session, act)

    def show_stage(self, session: DemoSession | None, stage: str | None) -> Page:
        return self._act(session, lambda s: "", shown=stage)

    def close(self, session: DemoSession | None) -> None:
        """Gradio's callback when a browser session expires: its download folder goes."""
        if session is not None:
            shutil.rmtree(session.folder, ignore_errors=True)

    # ------------------------------------------------------------------------------------- helpers
    def _load(self, session: DemoSession, image: Image.Image, image_id: str) -> str:
        session.load(image, image_id)
        return f"loaded {image_id} ({image.width}x{image.height}): press \"next stage\" or \"run all\""

    def _act(self, session: DemoSession | None, action: Callable[[DemoSession], str],
             shown: str | None = None) -> Page:
        with self.lock:
            if session is None:
                session = DemoSession(self.chain, self.options, Path(tempfile.mkdtemp(dir=self.workdir)))
            try:
                status = action(session)
            except SessionError as err:
                return self._page(session, f"**error:** {err}", shown)
            except Exception as err:  # a bug must not show a traceback in the page; the log keeps it
                log.exception("web demo action failed")
                return self._page(session, f"**internal error:** {type(err).__name__}: {err} (see the server log)",
                                  shown)
            return self._page(session, status, shown, write=True)

    def _page(self, session: DemoSession, status: str, shown: str | None = None, write: bool = False) -> Page:
        """The page for ``session``, showing stage ``shown`` when it ran (else the last stage that ran)."""
        ran = list(STAGES[: session.stage_index + 1]) if session.state is not None else []
        stage = shown if shown in ran else (ran[-1] if ran else None)
        page = Page(session, status, ran, stage, picture=view.overlay(session, stage))
        result = session.result() if "caption" in ran else None
        if stage is not None:
            out = session.output(stage)
            # The caption is free text: its table lists the entities it grounds (read-only, see editable_stage).
            caption_items = stage == "caption" and result is not None
            page.rows = view.entity_rows(result) if caption_items else view.items_to_rows(out.items)
            page.raw = out.raw
        if result is not None:
            page.caption, page.colors = view.highlighted_caption(result)
        if session.state is not None:
            page.session_json, page.overlay_png = self._downloads(session, stage, write)
        return page

    def _downloads(self, session: DemoSession, stage: str | None, write: bool) -> tuple[str, str]:
        """The session JSON (``chat``'s save format) and the overlay PNG, rewritten after every change."""
        name = re.sub(r"[^\w.-]+", "_", session.state.id) or "image"
        json_path, png_path = session.folder / f"{name}.json", session.folder / f"{name}.png"
        if write or not json_path.is_file():
            session.save(json_path)
            tmp = png_path.with_name(f".{png_path.name}.tmp")
            view.overlay(session, stage, caption=True).save(tmp, format="PNG")
            tmp.replace(png_path)
        return str(json_path), str(png_path)


def _seed(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise SessionError(f"seed must be a whole number, got {value!r}") from None


def _notes(out) -> str:
    notes = [" (hit the token budget: truncated)"] if out.truncated else []
    if out.malformed:
        notes.append(f"; {len(out.malformed)} fragment(s) did not parse: {', '.join(map(repr, out.malformed[:3]))}")
    return "".join(notes)


def _rerun_note(session: ChainSession, stage: str) -> str:
    later = STAGES[STAGES.index(stage) + 1 : session.stage_index + 1]
    return f"; reran {', '.join(later)}" if later else ""
