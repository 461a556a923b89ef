"""Stage prompts as data: ``prompts/<version>/`` YAML files -> a validated :class:`PromptSet`.

Layout of one version directory (``prompts/v1/`` holds the paper's wording)::

    meta.yaml      version, description, system (the chat system text)
    localize.yaml  version, stage, template, output      (one file per stage in STAGES)
    label.yaml     ... template has the placeholder {boxes}     (the stage-1 answer)
    discover.yaml  ... template has the placeholder {entities}  (the stage-2 answer)
    caption.yaml   ... template has the placeholder {entities}  (stage-2 + stage-3 answers merged)
                   label and caption may add ``followup``: the turn's text, no placeholder, when the earlier
                   answers are already in the conversation (``data.chain_rows: conversation``)
    segcap.yaml    optional: template has the placeholder {box}  (SGDiff SegCaptioning, a central entity's box)
    region.yaml    optional: template has the placeholder {box}  (SCA region captioning)
    direct.yaml    optional: no placeholder (direct captioning, the paper's baseline: image -> caption)

The four chain stages are required; an extra task (``EXTRA_TASKS``) is loaded when its file exists, so a
version without it simply cannot train or run that task (:meth:`PromptSet.require` says so by name).
A placeholder is ``{name}``; any other brace in a template is an error, so a typo such as ``{boxes``
cannot reach training data. Unknown keys, missing keys and wrong placeholders are rejected with a
message naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pancapchain.constants import EXTRA_TASKS, STAGES, TASKS

# The placeholders each task template must contain, exactly.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "localize": (),
    "label": ("boxes",),
    "discover": ("entities",),
    "caption": ("entities",),
    "segcap": ("box",),
    "region": ("box",),
    "direct": (),
}
_STAGE_KEYS = ("version", "stage", "template", "output")
_FOLLOWUP_STAGES = ("label", "caption")  # the stages a conversation asks in a later turn (optional key)
_META_KEYS = ("version", "description", "system")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptError(ValueError):
    """A prompt file that is missing, unreadable or invalid; the message names the file."""


@dataclass(frozen=True)
class StagePrompt:
    """One stage's template (``{name}`` placeholders) and a one-line description of its target format."""

    stage: str
    template: str
    output: str
    fields: tuple[str, ...]
    followup: str = ""  # the stage's turn when the earlier answers are in the conversation ("" = none)


@dataclass(frozen=True)
class PromptSet:
    """All stage prompts of one version plus the chat system text."""

    version: str
    system: str
    description: str
    stages: dict[str, StagePrompt] = field(default_factory=dict)

    def render(self, stage: str, **fields: str) -> str:
        """The stage prompt with its placeholders filled; the fields must match the template's exactly."""
        if stage not in self.stages:
            raise KeyError(f"prompt set {self.version} has no stage {stage!r}; stages: {list(self.stages)}")
        prompt = self.stages[stage]
        given, wanted = set(fields), set(prompt.fields)
        if given != wanted:
            raise ValueError(
                f"prompt {self.version}/{stage} takes fields {sorted(wanted)}, got {sorted(given)}"
            )
        return _PLACEHOLDER_RE.sub(lambda m: str(fields[m.group(1)]), prompt.template)

    def followup(self, stage: str) -> str:
        """The stage's follow-up turn (a conversation's later turn); PromptError when the version has none."""
        text = self.stages[stage].followup if stage in self.stages else ""
        if not text:
            raise PromptError(f"prompt version {self.version!r} has no followup for {stage!r} ({stage}.yaml): "
                              "data.chain_rows=conversation needs one in label.yaml and caption.yaml")
        return text

    def require(self, tasks: Sequence[str]) -> None:
        """Raise :class:`PromptError` naming every task of ``tasks`` this prompt version has no template for."""
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise PromptError(f"unknown tasks {unknown}; tasks are {list(TASKS)}")
        missing = [t for t in tasks if t not in self.stages]
        if missing:
            files = ", ".join(f"{t}.yaml" for t in missing)
            raise PromptError(
                f"prompt version {self.version!r} has no template for {missing} (no {files} in its directory): "
                f"add the file(s) or set data.stages weight 0 for {missing}"
            )


def default_prompt_root() -> Path:
    """``<repo>/prompts``: the directory next to the package (``<repo>/pancapchain/data/prompts.py``).

    Located from this module's own file, which is the same place as ``pancapchain.__file__``'s parent
    but also works when ``pancapchain`` is imported as a namespace package (``__file__`` None).
    """
    return Path(__file__).resolve().parents[2] / "prompts"


def recipe_prompts(version: str, system: str = "default") -> PromptSet:
    """The prompt set a recipe trains with: ``version``'s, its system text replaced unless ``system`` is "default"."""
    prompts = load_prompts(version)
    return prompts if system == "default" else replace(prompts, system=system)


def load_prompts(version: str = "v1", root: Path | None = None) -> PromptSet:
    """Load and validate ``<root>/<version>/``; raise :class:`PromptError` naming the bad file."""
    directory = Path(root if root is not None else default_prompt_root()) / version
    if not directory.is_dir():
        raise PromptError(f"prompt directory {directory} does not exist (version {version!r})")
    meta_path = directory / "meta.yaml"
    meta = _read_mapping(meta_path, _META_KEYS)
    _check_version(meta, version, meta_path)
    stages = {stage: _load_stage(directory / f"{stage}.yaml", stage, version) for stage in STAGES}
    for task in EXTRA_TASKS:
        if (directory / f"{task}.yaml").exists():
            stages[task] = _load_stage(directory / f"{task}.yaml", task, version)
    return PromptSet(
        version=version,
        system=_string(meta, "system", meta_path),
        description=_string(meta, "description", meta_path),
        stages=stages,
    )


def missing_task_prompts(version: str, tasks: Sequence[str], root: Path | None = None) -> list[str]:
    """The extra tasks of ``tasks`` whose ``<root>/<version>/<task>.yaml`` does not exist (a cheap pre-check)."""
    directory = Path(root if root is not None else default_prompt_root()) / version
    return [t for t in tasks if t in EXTRA_TASKS and not (directory / f"{t}.yaml").exists()]


def _load_stage(path: Path, stage: str, version: str) -> StagePrompt:
    data = _read_mapping(path, _STAGE_KEYS, ("followup",) if stage in _FOLLOWUP_STAGES else ())
    _check_version(data, version, path)
    if data["stage"] != stage:
        raise PromptError(f"{path}: stage is {data['stage']!r}, expected {stage!r} (the file name)")
    template = _string(data, "template", path)
    found = _placeholders(template, path)
    expected = STAGE_FIELDS[stage]
    if sorted(found) != sorted(expected):
        raise PromptError(
            f"{path}: template placeholders {sorted(found)} differ from the expected {sorted(expected)}"
        )
    followup = _string(data, "followup", path) if "followup" in data else ""
    if _placeholders(followup, path):
        raise PromptError(f"{path}: followup takes no placeholder (the earlier answers are in the conversation)")
    return StagePrompt(stage, template, _string(data, "output", path), expected, followup)


def _read_mapping(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise PromptError(f"{path}: missing prompt file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PromptError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a mapping with keys {list(keys)}, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in keys + optional)
    if unknown:
        raise PromptError(f"{path}: unknown keys {unknown}; allowed keys are {list(keys + optional)}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise PromptError(f"{path}: missing keys {missing}")
    return data


def _check_version(data: dict[str, Any], version: str, path: Path) -> None:
    if data["version"] != version:
        raise PromptError(f"{path}: version is {data['version']!r}, expected {version!r} (the directory name)")


def _string(data: dict[str, Any], key: str, path: Path) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{path}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _placeholders(template: str, path: Path) -> list[str]:
    """Placeholder names in order; a brace outside a ``{name}`` placeholder is an error."""
    leftover = _PLACEHOLDER_RE.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise PromptError(f"{path}: template has a stray brace outside a {{name}} placeholder: {template!r}")
    names = _PLACEHOLDER_RE.findall(template)
    if len(set(names)) != len(names):
        raise PromptError(f"{path}: template repeats a placeholder: {names}")
    return names
