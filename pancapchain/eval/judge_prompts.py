"""The LLM-judge prompts (prompts/pancapscore/*.txt) and how they are filled.

Three calls per caption, as in the official protocol: content extraction (``{caption}``), question
generation (``{caption}`` + ``{content}``), answering (``{caption}`` + ``{questions}``). Placeholders are
replaced literally in one pass, so braces inside the few-shot examples need no escaping.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

PROMPT_FILES = {
    "system": "system.txt",
    "extract": "extract_content.txt",
    "questions": "generate_questions.txt",
    "answer": "answer_questions.txt",
}
REQUIRED_PLACEHOLDERS = {
    "extract": ("{caption}",),
    "questions": ("{caption}", "{content}"),
    "answer": ("{caption}", "{questions}"),
}


def default_prompt_dir() -> Path:
    """prompts/pancapscore at the repository root (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parents[2] / "prompts" / "pancapscore"


@dataclass(frozen=True)
class JudgePrompts:
    system: str
    extract: str
    questions: str
    answer: str

    @staticmethod
    def load(folder: str | Path | None = None) -> JudgePrompts:
        """Read and check the four templates; a missing file or placeholder is a clear error."""
        folder = Path(folder) if folder else default_prompt_dir()
        texts = {}
        for key, name in PROMPT_FILES.items():
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"judge prompt {path} is missing (expected {list(PROMPT_FILES.values())})")
            texts[key] = path.read_text(encoding="utf-8").strip()
        for key, needed in REQUIRED_PLACEHOLDERS.items():
            missing = [p for p in needed if p not in texts[key]]
            if missing:
                raise ValueError(f"judge prompt {folder / PROMPT_FILES[key]} lacks placeholder(s) {missing}")
        return JudgePrompts(**texts)

    def fingerprint(self) -> str:
        """Short hash of all templates (part of every cache key, so edited prompts are re-run)."""
        blob = "\x00".join([self.system, self.extract, self.questions, self.answer])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def extract_prompt(self, caption: str) -> str:
        return fill(self.extract, caption=caption.strip())

    def questions_prompt(self, caption: str, content_lines: list[str]) -> str:
        return fill(self.questions, caption=caption.strip(), content="\n".join(content_lines))

    def answer_prompt(self, caption: str, question_lines: list[str]) -> str:
        return fill(self.answer, caption=caption.strip(), questions="\n".join(question_lines))


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` placeholders in one pass (inserted text is never scanned again)."""
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in values))
    return pattern.sub(lambda m: values[m.group(0)[1:-1]], template)
