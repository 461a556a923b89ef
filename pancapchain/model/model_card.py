"""The export's ``README.md``: a Hub model card (YAML metadata + text), and ``--push-to-hub``.

Metadata follows the Hub's model-card conventions (``huggingface_hub.ModelCardData``): ``library_name:
transformers``, ``pipeline_tag: image-text-to-text``, tags, ``base_model`` and ``datasets`` when they are Hub
ids, and ``model-index`` eval results when evaluation outputs (``pancapchain eval``'s ``metrics.json``) are
given or found beside the checkpoint. Local paths never go into ``base_model``/``datasets`` (the Hub rejects
ids that do not exist); the text lists them instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

TAGS = ["pancapchain", "panoptic-captioning", "llava", "image-text-to-text", "grounded-captioning"]
TASK = ("image-text-to-text", "Panoptic captioning")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DIMENSIONS = (("tag", "Tagging F1"), ("loc", "Localization F1"), ("attr", "Attribute F1"),
               ("rel", "Relation F1"), ("global", "Global F1"))


class ModelCardError(ValueError):
    """Card inputs that cannot be used (e.g. an unreadable metrics.json); the message names the file."""


@dataclass
class CardOptions:
    """What the export cannot know by itself: Hub ids, a license, evaluation outputs (``[NAME=]PATH``)."""

    base_model_id: str | None = None
    dataset_ids: list[str] = field(default_factory=list)
    evals: list[str] = field(default_factory=list)
    license: str | None = None


@dataclass
class EvalMetrics:
    """One ``pancapchain eval`` output: a name for its dataset (the folder's name by default) and its metrics."""

    name: str
    path: Path
    metrics: dict[str, Any]


def hub_id(value: str | None) -> str | None:
    """``value`` when it looks like a Hub repo id (``owner/name``) and is not a local path, else None."""
    if not value or Path(value).expanduser().exists() or not _HUB_ID_RE.match(value):
        return None
    return value


def read_eval(spec: str) -> EvalMetrics:
    """``[NAME=]PATH`` where PATH is an eval output folder or its metrics.json."""
    name, _, path_text = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(path_text)
    path = path / "metrics.json" if path.is_dir() else path
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelCardError(f"--eval {spec}: cannot read {path}: {err}") from None
    if not isinstance(metrics, dict) or "pancapscore" not in metrics or "scores" not in metrics:
        raise ModelCardError(f"--eval {spec}: {path} is not a `pancapchain eval` metrics.json (no pancapscore)")
    return EvalMetrics(name or path.parent.name, path, metrics)


def find_evals(checkpoint: Path) -> list[EvalMetrics]:
    """Eval outputs kept with a run: ``<checkpoint>/eval/metrics.json`` (as ``scripts/demo.sh`` writes)."""
    found = checkpoint / "eval" / "metrics.json"
    return [read_eval(str(found))] if found.is_file() else []


def _eval_results(evals: list[EvalMetrics]) -> list[EvalResult]:
    results = []
    for ev in evals:
        common = dict(task_type=TASK[0], task_name=TASK[1], dataset_type=hub_id(ev.name) or ev.name,
                      dataset_name=ev.name, metric_config=str(ev.metrics.get("mode", "offline")))
        results.append(EvalResult(metric_type="pancapscore", metric_name="PancapScore",
                                  metric_value=round(float(ev.metrics["pancapscore"]), 2), **common))
        for dim, title in _DIMENSIONS:
            f1 = (ev.metrics["scores"].get(dim) or {}).get("f1")
            if isinstance(f1, (int, float)):
                results.append(EvalResult(metric_type=f"f1_{dim}", metric_name=title,
                                          metric_value=round(float(f1), 2), **common))
    return results


def card_data(meta: dict, evals: list[EvalMetrics], model_name: str, base_model_id: str | None = None,
              dataset_ids: list[str] | None = None, license: str | None = None) -> ModelCardData:
    """The YAML metadata of the card."""
    data = meta.get("recipe", {}).get("data", {})
    datasets = list(dataset_ids or []) + [d for d in (hub_id(data.get("train")), hub_id(data.get("val"))) if d]
    extra_tags = ["lora"] if meta.get("merge") else []
    if meta.get("extra_modules", {}).get("mask_head"):
        extra_tags.append("image-segmentation")
    return ModelCardData(
        base_model=base_model_id or hub_id(meta.get("base_model")),
        datasets=sorted(set(datasets)) or None,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=TAGS + extra_tags,
        license=license,
        model_name=model_name,
        eval_results=_eval_results(evals) or None,
    )


def build_model_card(meta: dict, evals: list[EvalMetrics], model_name: str, base_model_id: str | None = None,
                     dataset_ids: list[str] | None = None, license: str | None = None,
                     train_metrics: dict | None = None) -> ModelCard:
    """The card: metadata from ``card_data`` and a text made of the export's own facts."""
    data = card_data(meta, evals, model_name, base_model_id, dataset_ids, license)
    body = _body(meta, evals, model_name, data, train_metrics or {})
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _body(meta: dict, evals: list[EvalMetrics], name: str, data: ModelCardData, train: dict) -> str:
    recipe = meta.get("recipe", {})
    lora, rdata, rtrain = recipe.get("lora", {}), recipe.get("data", {}), recipe.get("train", {})
    base = data.base_model or f"`{meta.get('base_model')}` (a local model, not on the Hub)"
    lines = [
        f"# {name}", "",
        "A LLaVA-style model fine-tuned for **panoptic captioning** with pancapchain: the four-stage chain "
        "(localize -> label -> discover -> caption) in one `LlavaForConditionalGeneration`, LoRA and projector "
        "merged into the base (see `pancap_meta.json`).", "",
        "## Use", "", "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        'model = AutoModelForImageTextToText.from_pretrained("PATH_OR_REPO", dtype="auto")',
        'processor = AutoProcessor.from_pretrained("PATH_OR_REPO")', "```", "",
        "The chain, the web demo: `pancapchain infer --model PATH ...`, `pancapchain serve --model PATH`.", "",
        *_box_feature_note(meta),
        "## Training", "",
        f"- base model: {base}",
        f"- prompts `{meta.get('prompt_version')}`, box format `{meta.get('box_format')}`, "
        f"stage weights {meta.get('stages')}",
        f"- LoRA r {lora.get('r')} / alpha {lora.get('alpha')}; learning rate {rtrain.get('learning_rate')}, "
        f"projector {rtrain.get('projector_lr')}; epochs {rtrain.get('epochs')}, max steps {rtrain.get('max_steps')}",
        f"- data (the recipe's): train `{rdata.get('train') or '-'}`, validation `{rdata.get('val') or '-'}`",
        f"- exported from {_step(meta.get('checkpoint_step'))} as {meta.get('dtype')}; versions {meta.get('versions')}",
    ]
    if isinstance(train.get("eval_loss_end"), (int, float)):
        lines.append(f"- eval loss {_loss(train.get('eval_loss_start'))} -> {_loss(train['eval_loss_end'])}")
    lines += ["", "## Evaluation", ""]
    if not evals:
        lines.append("No evaluation given (`pancapchain export --eval DIR` adds `pancapchain eval` results).")
    for ev in evals:
        scores = ev.metrics["scores"]
        lines += [f"`{ev.name}` ({ev.metrics.get('n_images')} images, {ev.metrics.get('mode')} mode): "
                  f"PancapScore **{ev.metrics['pancapscore']:.2f}** (max 410)", "",
                  "| " + " | ".join(t for _, t in _DIMENSIONS) + " |", "|" + "---:|" * len(_DIMENSIONS),
                  "| " + " | ".join(_fmt((scores.get(d) or {}).get("f1")) for d, _ in _DIMENSIONS) + " |", ""]
    return "\n".join(lines).rstrip() + "\n"


def _box_feature_note(meta: dict) -> list[str]:
    """Card lines for a model trained with box features: its weights alone do not add them (forward hooks do)."""
    if not meta.get("box_features"):
        return []
    span = int(meta.get("box_feature_span") or 0)
    span_arg = f", span={span}" if span else ""
    return ["This model was trained with **box features** (`data.box_features`): every `</box>` it reads carries "
            "the mean image feature inside its box, added by forward hooks, not by the weights. pancapchain "
            "attaches them when it loads the model; with plain transformers call "
            "`pancapchain.model.box_features.attach_box_features("
            f"model, processor.tokenizer, enabled=True{span_arg})` "
            "after loading, or its answers will be those of a model reading boxes it was not trained on.", ""]


def _step(step) -> str:
    return f"step {step}" if step is not None else "the run's final weights"


def _loss(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (huggingface_hub's own upload); returns the commit URL.

    The token is whatever huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``); nothing here reads it.
    """
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=message or f"pancapchain export {Path(folder).name}")
    return str(getattr(info, "commit_url", info))


def export_card(checkpoint: Path, meta: dict, model_name: str, options: CardOptions | None) -> ModelCard:
    """The card of an export of ``checkpoint``: the given evals, else those found beside the checkpoint."""
    options = options or CardOptions()
    evals = [read_eval(spec) for spec in options.evals] or find_evals(checkpoint)
    train_file = checkpoint / "metrics.json"
    try:
        train = json.loads(train_file.read_text()) if train_file.is_file() else {}
    except (OSError, ValueError):
        train = {}  # a training summary is a nicety in the text; a broken one must not stop the export
    return build_model_card(meta, evals, model_name, options.base_model_id, options.dataset_ids,
                            options.license, train if isinstance(train, dict) else {})
