"""The synthetic ablation protocol (``eval/synthetic_ablation.yaml``) read and checked before anything runs.

``benchmarks/learning_quality.py`` runs it: one synthetic train set and held-out sets from other seeds (and
another image size), then per variant: train within the wall budget -> infer with the variant's plan -> score.
Every variant's recipe (the base recipe + its overrides + the budget) is validated here, so a typo in a
variant fails at start, not after an hour of training the other variants.
"""

from __future__ import annotations

import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pancapchain.config import RecipeConfig, load_recipe

PLANS = ("chain", "no-discover", "direct")  # pancapchain.infer.chain.PLANS (not imported: no torch here)
_TOP_KEYS = {"recipe", "budget_seconds", "pretrain_seconds", "lm_pretrain_seconds", "data", "loss_rows",
             "infer_batch_size", "infer_args", "variants"}
_OPTIONAL_KEYS = {"pretrain_seconds", "lm_pretrain_seconds", "infer_args"}
_VARIANT_KEYS = {"plan", "overrides", "eval_sets", "infer_args"}
_SET_KEYS = {"n", "seed", "size"}


class ProtocolError(ValueError):
    """An invalid protocol file; the message lists every problem."""


@dataclass(frozen=True)
class SynthSet:
    n: int
    seed: int
    size: int


@dataclass(frozen=True)
class Variant:
    name: str
    plan: str
    overrides: dict[str, str]
    eval_sets: tuple[str, ...]
    infer_args: tuple[str, ...] = ()  # this variant's `pancapchain infer` flags, after the protocol's

    def override_args(self) -> list[str]:
        """``key=value`` arguments for train.py (values as YAML text)."""
        return [f"{k}={v}" for k, v in self.overrides.items()]


@dataclass(frozen=True)
class Protocol:
    recipe: Path
    budget_seconds: float
    data: dict[str, SynthSet]
    loss_rows: int
    infer_batch_size: int
    variants: dict[str, Variant] = field(default_factory=dict)
    # > 0: `pancapchain pretrain-tiny` builds one base for every variant first; its seconds come out of each
    # variant's budget (the variant trains for budget_seconds - pretrain_seconds on top of that base)
    pretrain_seconds: float = 0.0
    # > 0: that base's language model is then pretrained on the caption rows without images (pretrain-tiny
    # --lm-seconds); these seconds come out of each variant's budget too
    lm_pretrain_seconds: float = 0.0
    # more `pancapchain infer` flags for every variant (decoding settings; a plan without stage 1 ignores the
    # stage-1 ones)
    infer_args: tuple[str, ...] = ()

    @property
    def train_seconds(self) -> float:
        return self.budget_seconds - self.pretrain_seconds - self.lm_pretrain_seconds

    def variant_infer_args(self, variant: Variant, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The `pancapchain infer` flags of ``variant``: the protocol's, the variant's, then ``extra``."""
        return self.infer_args + variant.infer_args + tuple(extra)

    def recipe_for(self, variant: Variant, extra: list[str] | None = None) -> RecipeConfig:
        """The validated recipe of ``variant`` (raises ConfigError naming every problem)."""
        args = variant.override_args() + [f"train.max_seconds={self.train_seconds}"] + list(extra or [])
        return load_recipe(str(self.recipe), args)


def load_protocol(path: str | Path, root: str | Path = ".") -> Protocol:
    """Read and check a protocol file; every variant's recipe is validated too."""
    raw = yaml.safe_load(Path(path).read_text())
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: a protocol is a YAML mapping")
    problems += [f"unknown key {k!r} (known: {sorted(_TOP_KEYS)})" for k in sorted(set(raw) - _TOP_KEYS)]
    problems += [f"missing key {k!r}" for k in sorted(_TOP_KEYS - _OPTIONAL_KEYS - set(raw))]
    if problems:
        raise ProtocolError(f"{path}:\n  - " + "\n  - ".join(problems))
    data = {name: _synth_set(name, spec, problems) for name, spec in (raw["data"] or {}).items()}
    if "train" not in data:
        problems.append("data needs a 'train' set")
    variants = {name: _variant(name, spec, set(data) - {"train"}, problems) for name, spec in raw["variants"].items()}
    budget, pretrain = float(raw["budget_seconds"]), float(raw.get("pretrain_seconds", 0) or 0)
    lm = float(raw.get("lm_pretrain_seconds", 0) or 0)
    if budget <= 0:
        problems.append("budget_seconds must be > 0")
    if not 0 <= pretrain < budget:
        problems.append(f"pretrain_seconds must be >= 0 and below budget_seconds ({budget:g}), not {pretrain:g}")
    if lm < 0 or (lm > 0 and pretrain <= 0):
        problems.append(f"lm_pretrain_seconds ({lm:g}) must be >= 0, and > 0 only with pretrain_seconds > 0 (it "
                        "pretrains the language model of that base)")
    elif pretrain + lm >= budget:
        problems.append(f"pretrain_seconds + lm_pretrain_seconds ({pretrain + lm:g}) must stay below "
                        f"budget_seconds ({budget:g}): the variants need time to train")
    infer_args = raw.get("infer_args") or ""
    if not isinstance(infer_args, str):
        problems.append(f"infer_args is one string of pancapchain infer flags, not {infer_args!r}")
        infer_args = ""
    proto = Protocol(Path(root) / raw["recipe"], budget, data, int(raw["loss_rows"]), int(raw["infer_batch_size"]),
                     variants, pretrain, lm, tuple(shlex.split(infer_args)))
    for variant in variants.values():
        try:
            proto.recipe_for(variant)
        except (ValueError, OSError) as err:
            problems.append(f"variant {variant.name}: {err}")
    if problems:
        raise ProtocolError(f"{path}:\n  - " + "\n  - ".join(problems))
    return proto


def _synth_set(name: str, spec: dict, problems: list[str]) -> SynthSet:
    if not isinstance(spec, dict) or set(spec) != _SET_KEYS:
        problems.append(f"data.{name} needs exactly the keys {sorted(_SET_KEYS)}")
        return SynthSet(0, 0, 64)
    return SynthSet(int(spec["n"]), int(spec["seed"]), int(spec["size"]))


def _variant(name: str, spec: dict, sets: set[str], problems: list[str]) -> Variant:
    spec = spec or {}
    problems += [f"variant {name}: unknown key {k!r}" for k in sorted(set(spec) - _VARIANT_KEYS)]
    plan = spec.get("plan", "chain")
    if plan not in PLANS:
        problems.append(f"variant {name}: plan {plan!r} is not one of {PLANS}")
    eval_sets = tuple(spec.get("eval_sets") or ["val"])
    problems += [f"variant {name}: eval set {s!r} is not a held-out data set {sorted(sets)}"
                 for s in eval_sets if s not in sets]
    overrides = {str(k): "null" if v is None else str(v) for k, v in (spec.get("overrides") or {}).items()}
    infer_args = spec.get("infer_args") or ""
    if not isinstance(infer_args, str):
        problems.append(f"variant {name}: infer_args is one string of pancapchain infer flags, not {infer_args!r}")
        infer_args = ""
    return Variant(name, plan, overrides, eval_sets, tuple(shlex.split(infer_args)))


# ------------------------------------------------------------------------------------------------ seeds
# One training per variant is one draw: the same recipe spreads by several tag + loc points from seed to seed
# (docs/learning_quality.md, "Three seeds of chain and direct captioning"). `--seeds` trains each variant once per
# seed; these helpers name those runs and summarise them.


def parse_seeds(text: str) -> list[int]:
    """``"42,43,44"`` -> [42, 43, 44]; an empty text -> [] (the recipe's own seed). Raises ValueError naming the
    bad entry or the repeated seed."""
    seeds = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if not part.isdigit():
            raise ValueError(f"--seeds: {part!r} is not a non-negative integer (give e.g. --seeds 42,43,44)")
        if int(part) in seeds:
            raise ValueError(f"--seeds: seed {part} is given twice")
        seeds.append(int(part))
    return seeds


def run_key(variant: str, seed: int, recipe_seed: int) -> str:
    """The results key (and run folder name) of one training: the variant's name for the recipe's own seed, so
    results written before seeds existed stay valid, ``variant@seed`` for any other seed."""
    return variant if seed == recipe_seed else f"{variant}@{seed}"


def split_key(key: str, recipe_seed: int) -> tuple[str, int]:
    """Inverse of :func:`run_key`: (variant, seed)."""
    name, _, seed = key.partition("@")
    return name, int(seed) if seed else recipe_seed


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, where ``statistics.stdev`` raises)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_summary(points: dict[tuple[str, int, str], tuple[float, float]]) -> list[list[str]]:
    """Rows ``[variant, eval set, seeds, PancapScore mean ± sd, tag + loc mean ± sd]`` from ``points``:
    (variant, seed, eval set) -> (PancapScore, tag F1 + loc F1)."""
    groups: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for (variant, seed, eval_set), (score, tag_loc) in points.items():
        groups.setdefault((variant, eval_set), []).append((seed, score, tag_loc))
    rows = []
    for (variant, eval_set), runs in groups.items():
        runs.sort()
        (ps, ps_sd), (tl, tl_sd) = mean_sd([r[1] for r in runs]), mean_sd([r[2] for r in runs])
        rows.append([variant, eval_set, ",".join(str(r[0]) for r in runs), f"{ps:.2f} ± {ps_sd:.2f}",
                     f"{tl:.2f} ± {tl_sd:.2f}"])
    return rows


def paired_gaps(points: dict[tuple[str, int, str], tuple[float, float]], reference: str) -> list[list[str]]:
    """Rows ``[reference - other, eval set, gap per seed, mean ± sd]`` of tag F1 + loc F1: the reference's
    score minus the other variant's, trained with the same seed and scored on the same set (the issue's
    comparison is paired: the same data, base and seed on both sides)."""
    rows = []
    others = sorted({(v, s) for v, _, s in points if v != reference})
    for other, eval_set in others:
        seeds = sorted(seed for v, seed, s in points if v == other and s == eval_set
                       and (reference, seed, eval_set) in points)
        if not seeds:
            continue
        gaps = [points[(reference, seed, eval_set)][1] - points[(other, seed, eval_set)][1] for seed in seeds]
        mean, sd = mean_sd(gaps)
        rows.append([f"{reference} - {other}", eval_set, ", ".join(f"{s}: {g:+.2f}" for s, g in zip(seeds, gaps)),
                     f"{mean:+.2f} ± {sd:.2f}"])
    return rows
