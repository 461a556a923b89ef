"""Learning quality on CPU: the paper's ablation (chain vs direct captioning vs no discover stage), one table.

    .venv/bin/python benchmarks/learning_quality.py [--protocol eval/synthetic_ablation.yaml] [--out runs/lq]
                                                   [--variants chain,direct] [--budget-seconds 540] [--force]
                                                   [--seeds 42,43,44]

Protocol (eval/synthetic_ablation.yaml): synthetic scenes with fixed seeds (train; held-out val from another
seed; a second held-out set from a third seed at another image size), then per variant: train the recipe with
the variant's overrides within the same wall-clock budget -> run the variant's plan over the held-out scenes
(`pancapchain infer`) -> score (`pancapchain eval`, offline PancapScore + mask metrics). With
``pretrain_seconds`` in the protocol, `pancapchain pretrain-tiny` first builds one base that every variant
starts from; "train s" then counts the base's wall time (data preparation included) plus the variant's training. Results are written
per variant (atomically) to OUT/results.json, so an interrupted run resumes where it stopped; OUT/table.md
holds the printed table. Run it alone on the machine: timings and the budget's worth depend on it.

One training is one draw: with ``--seeds`` every variant is trained once per seed (``train.seed``; the recipe's own
seed keeps the variant's plain name, another seed is ``variant@seed``), and a second table gives each variant's mean
± sd over its seeds and the first variant's paired tag + loc lead over each other one, seed by seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pancapchain.ablation import (  # noqa: E402
    Protocol,
    Variant,
    load_protocol,
    paired_gaps,
    parse_seeds,
    run_key,
    seed_summary,
    split_key,
)
from pancapchain.data.io import atomic_write_json, atomic_write_text  # noqa: E402

COLUMNS = ("variant", "eval set", "train s", "PancapScore", "tag F1", "loc F1", "attr F1", "rel F1", "global F1",
           "% cut at max tokens", "mask mIoU")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], log: Path) -> None:
    """Run a step, its output to ``log``; a failure stops the benchmark with the log's tail."""
    print("  $ " + " ".join(cmd), flush=True)
    with log.open("w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"step failed (exit {code}), log {log}:\n{tail}")


def make_data(proto: Protocol, out: Path) -> dict[str, Path]:
    """Generate each synthetic set once (kept when its config matches); returns set name -> JSONL."""
    paths = {}
    for name, spec in proto.data.items():
        folder = out / "data" / name
        split = "train" if name == "train" else "val"
        args = ["--n-train", str(spec.n if split == "train" else 0), "--n-val", str(0 if split == "train" else spec.n)]
        stamp = folder / "protocol.json"
        want = {"n": spec.n, "seed": spec.seed, "size": spec.size}
        if not stamp.exists() or json.loads(stamp.read_text()) != want:
            print(f"== synth {name}: {want}", flush=True)
            run([sys.executable, "-m", "pancapchain", "synth", "--out", str(folder), *args, "--seed", str(spec.seed),
                 "--size", str(spec.size), "--no-progress"], out / f"synth_{name}.log")
            atomic_write_json(stamp, want)
        paths[name] = folder / f"{split}.jsonl"
    rows = paths["val"].read_text().splitlines()[: proto.loss_rows]
    loss_file = paths["val"].parent / "val_loss.jsonl"  # next to val.jsonl: same image root
    atomic_write_text(loss_file, "\n".join(rows) + "\n")
    paths["loss"] = loss_file
    return paths


def pretrain(proto: Protocol, data: dict[str, Path], out: Path) -> tuple[list[str], float]:
    """Build the shared pretrained tiny base once (kept when its settings match): (recipe overrides, seconds)."""
    if proto.pretrain_seconds <= 0:
        return [], 0.0
    base = out / "base"
    want = {"seconds": proto.pretrain_seconds, "recipe": str(proto.recipe), "train": str(data["train"])}
    if proto.lm_pretrain_seconds > 0:  # the key is absent otherwise, so earlier bases still match
        want["lm_seconds"] = proto.lm_pretrain_seconds
    stamp = base / "protocol.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != want:
        print(f"== pretrain-tiny: {proto.pretrain_seconds:.0f} s + language model {proto.lm_pretrain_seconds:.0f} s",
              flush=True)
        run([sys.executable, "-m", "pancapchain", "pretrain-tiny", "--recipe", str(proto.recipe), "--out", str(base),
             "--seconds", str(proto.pretrain_seconds), "--lm-seconds", str(proto.lm_pretrain_seconds),
             f"data.train={data['train']}"], out / "pretrain.log")
        atomic_write_json(stamp, want)
    seconds = json.loads((base / "pretrain_tiny.json").read_text())["total_seconds"]
    return [f"model.base={base}"], float(seconds)


def run_dir_of(out: Path, key: str) -> Path:
    """The checkpoint folder of the training ``key`` (:func:`pancapchain.ablation.run_key`)."""
    return out / "runs" / key.replace("@", "-s")


def train(proto: Protocol, variant: Variant, key: str, seed: int, data: dict[str, Path], out: Path,
          base: list[str]) -> dict:
    run_dir = run_dir_of(out, key)
    args = variant.override_args() + [f"train.max_seconds={proto.train_seconds}", f"data.train={data['train']}",
                                      f"data.val={data['loss']}", f"train.output_dir={run_dir}", "train.resume=never",
                                      f"train.seed={seed}", *base]
    run([sys.executable, "train.py", "--recipe", str(proto.recipe), *args], out / f"train_{key}.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("stopped_by") not in (None, "wall_budget"):
        print(f"== {key}: WARNING: ended at its epoch cap after {metrics['train_wall_seconds']:.0f} of "
              f"{proto.train_seconds:.0f} s, learning rate at {100 * metrics['lr_factor_end']:.0f}% of its peak: the "
              "variants did not get the same budget (raise train.epochs in the recipe)", flush=True)
    return metrics


def score(variant: Variant, key: str, eval_set: str, data: dict[str, Path], out: Path, batch_size: int,
          rescore_only: bool = False, infer_args: tuple[str, ...] = ()) -> dict:
    """Infer the held-out set with the checkpoint of training ``key`` and the variant's plan, and score it
    (``rescore_only``: score existing preds; ``infer_args``: more ``pancapchain infer`` flags)."""
    run_dir, tag = run_dir_of(out, key), f"{key}_{eval_set}"
    preds = out / "preds" / f"{tag}.jsonl"
    if not rescore_only:
        preds.parent.mkdir(parents=True, exist_ok=True)
        preds.unlink(missing_ok=True)
        plan_flag = {"chain": [], "direct": ["--direct"], "no-discover": ["--skip-discover"]}[variant.plan]
        run([sys.executable, "-m", "pancapchain", "infer", "--model", str(run_dir), "--data", str(data[eval_set]),
             "--out", str(preds), "--batch-size", str(batch_size), *plan_flag, *infer_args], out / f"infer_{tag}.log")
    run([sys.executable, "-m", "pancapchain", "eval", "--pred", str(preds), "--gt", str(data[eval_set]),
         "--out", str(out / "eval" / tag), "--no-caption-metrics"], out / f"eval_{tag}.log")
    metrics = json.loads((out / "eval" / tag / "metrics.json").read_text())
    return {"metrics": metrics, "cut": cut_share(preds), "infer_args": list(infer_args)}


def base_seconds(run_dir: Path) -> float:
    """Wall seconds of the pretrain-tiny base a run started from (0 for any other base)."""
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    report = Path(str((recipe.get("model") or {}).get("base", ""))) / "pretrain_tiny.json"
    return float(json.loads(report.read_text())["total_seconds"]) if report.is_file() else 0.0


def cut_share(preds: Path) -> dict:
    """Stage outputs that hit max_new_tokens, over all stage outputs of the predictions."""
    cut = total = 0
    for line in preds.read_text().splitlines():
        for stage in json.loads(line).get("stages", {}).values():
            total += 1
            cut += bool(stage.get("truncated"))
    return {"cut": cut, "total": total, "percent": 100.0 * cut / max(total, 1)}


CAPPED = " (cap)"  # marks the train s of a run its epoch cap ended before the budget


def row(name: str, eval_set: str, train_s: float, result: dict, stopped_by: str | None = None) -> list[str]:
    """One table row; ``stopped_by`` (metrics.json) other than "wall_budget" marks the train s with CAPPED."""
    m, scores = result["metrics"], result["metrics"]["scores"]
    mask = m.get("mask_metrics") or {}
    f1 = [scores[d]["f1"] for d in ("tag", "loc", "attr", "rel", "global")]  # already x100
    miou = f"{100 * mask['mIoU']:.2f}" if mask else "n/a"
    capped = CAPPED if stopped_by not in (None, "wall_budget") else ""
    return [name, eval_set, f"{train_s:.0f}{capped}", f"{m['pancapscore']:.2f}", *(f"{v:.2f}" for v in f1),
            f"{result['cut']['percent']:.1f} ({result['cut']['cut']}/{result['cut']['total']})", miou]


def table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def seeds_tables(results: dict, keys: list[str], recipe_seed: int, reference: str) -> str:
    """Mean ± sd over seeds and the paired leads of ``reference``; empty when the results hold one seed only."""
    points = {}
    for key in keys:
        name, seed = split_key(key, recipe_seed)
        for eval_set, res in results[key]["sets"].items():
            s = res["metrics"]["scores"]
            points[(name, seed, eval_set)] = (res["metrics"]["pancapscore"], s["tag"]["f1"] + s["loc"]["f1"])
    if len({seed for _, seed, _ in points}) < 2:
        return ""
    summary, gaps = seed_summary(points), paired_gaps(points, reference)
    return (table(summary, ("variant", "eval set", "seeds", "PancapScore", "tag F1 + loc F1")) + "\n\n"
            + table(gaps, ("lead, tag F1 + loc F1", "eval set", "per seed", "mean ± sd")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default=str(ROOT / "eval" / "synthetic_ablation.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "learning_quality"))
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all of the protocol)")
    parser.add_argument("--budget-seconds", type=float, default=0, help="override the protocol's training budget")
    parser.add_argument("--force", action="store_true", help="redo variants that already have results")
    parser.add_argument("--seeds", default="",
                        help="comma-separated training seeds, each variant trained once per seed (default: the "
                             "recipe's train.seed only)")
    parser.add_argument("--rescore", action="store_true",
                        help="score the existing predictions again with the current evaluation code (no training)")
    parser.add_argument("--reinfer", action="store_true",
                        help="run inference and scoring again with the existing checkpoints (decoding changed; no training)")
    parser.add_argument("--infer-args", default="",
                        help="more pancapchain infer flags for every variant, after the protocol's infer_args "
                             "(e.g. '--localize-views 1' turns its views off; recorded in results.json)")
    parser.add_argument("--row", nargs=3, metavar=("RUN", "PREDS", "EVAL_DIR"),
                        help="only print the table row of an existing chain run (used by scripts/demo.sh)")
    args = parser.parse_args()
    if args.row:
        run_dir, preds, eval_dir = (Path(p) for p in args.row)
        train_s = json.loads((run_dir / "metrics.json").read_text())["train_wall_seconds"] + base_seconds(run_dir)
        result = {"metrics": json.loads((eval_dir / "metrics.json").read_text()), "cut": cut_share(preds)}
        print(table([row("chain", "val", train_s, result)]))
        return 0
    proto = load_protocol(args.protocol, ROOT)
    if args.budget_seconds > 0:
        proto = dataclasses.replace(proto, budget_seconds=args.budget_seconds)
    names = [v for v in args.variants.split(",") if v] or list(proto.variants)
    unknown = sorted(set(names) - set(proto.variants))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; the protocol has {list(proto.variants)}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    recipe_seed = proto.recipe_for(proto.variants[names[0]]).train.seed
    seeds = seeds or [recipe_seed]
    extra_infer_args = tuple(shlex.split(args.infer_args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() and not args.force else {}
    data = make_data(proto, out)
    base, pretrain_s = pretrain(proto, data, out) if not (args.rescore or args.reinfer) else ([], 0.0)
    keys = [run_key(name, seed, recipe_seed) for name in names for seed in seeds]
    for key in keys if args.rescore or args.reinfer else []:
        for eval_set in results.get(key, {}).get("sets", {}):
            print(f"== {key}: {'infer + eval' if args.reinfer else 'rescore'} {eval_set}", flush=True)
            variant = proto.variants[split_key(key, recipe_seed)[0]]
            results[key]["sets"][eval_set] = score(variant, key, eval_set, data, out, proto.infer_batch_size,
                                                   rescore_only=not args.reinfer,
                                                   infer_args=proto.variant_infer_args(variant, extra_infer_args))
        atomic_write_json(results_file, results)
    for key in keys if not (args.rescore or args.reinfer) else []:
        if key in results and results[key].get("budget_seconds") == proto.budget_seconds:
            print(f"== {key}: done before (results.json), skipped; --force redoes it", flush=True)
            continue
        name, seed = split_key(key, recipe_seed)
        variant = proto.variants[name]
        print(f"== {key}: train ({proto.budget_seconds:.0f} s budget, seed {seed}), plan {variant.plan}", flush=True)
        started = time.time()
        metrics = train(proto, variant, key, seed, data, out, base)
        entry = {"budget_seconds": proto.budget_seconds, "pretrain_seconds": pretrain_s, "seed": seed,
                 "train": metrics, "sets": {}}
        for eval_set in variant.eval_sets:
            print(f"== {key}: infer + eval on {eval_set}", flush=True)
            entry["sets"][eval_set] = score(variant, key, eval_set, data, out, proto.infer_batch_size,
                                            infer_args=proto.variant_infer_args(variant, extra_infer_args))
        entry["wall_seconds"] = round(time.time() - started, 1)
        results[key] = entry
        atomic_write_json(results_file, results)
    done = [key for key in keys if key in results]
    rows = [row(key, s, results[key]["train"]["train_wall_seconds"] + results[key].get("pretrain_seconds", 0), res,
                results[key]["train"].get("stopped_by"))
            for key in done for s, res in results[key]["sets"].items()]
    text = table(rows)
    if any(r[2].endswith(CAPPED) for r in rows):
        text += (f"\n\n{CAPPED}: ended at its epoch cap before the wall budget, its learning rate not annealed; "
                 "not the protocol's comparison (raise train.epochs in the recipe)")
    extra = seeds_tables(results, done, recipe_seed, names[0])
    text = text + ("\n\n" + extra if extra else "")
    atomic_write_text(out / "table.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
