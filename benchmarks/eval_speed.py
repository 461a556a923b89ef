"""Evaluation speed on the 500 SA-Pancap validation captions, offline mode, stage by stage, two cases side by side.

    .venv/bin/python benchmarks/eval_speed.py [--captions PATH] [--out DIR] [--no-meteor]

Cases (PancapScore without caption metrics, <= 30 s each on 2 CPU cores is the goal):
* GT vs GT: each caption scored against itself (tag F1 = loc F1 = 100 is the sanity check);
* perturbed: each image gets the *next* image's caption, so no sentence is shared and every support
  query needs an embedding (the slowest prediction text there is).
Then caption metrics (BLEU-4 / CIDEr-D / ROUGE-L, METEOR when Java is present) of GT vs GT, and the total.
Both cases run in this one process after the model load, so their ratio is fair even on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pancapchain.data.caption_parser import strip_boxes
from pancapchain.data.sapancap import sample_id
from pancapchain.eval.caption_metrics import bleu, cider_d, meteor, meteor_status, rouge_l
from pancapchain.eval.embed import get_embedder
from pancapchain.eval.report import summary_table, write_outputs
from pancapchain.eval.runner import EvalOptions, evaluate

DEFAULT_CAPTIONS = Path("/work/shared/data/sapancap/val_gtcaption.json")
GOAL_SECONDS = 60.0
CASE_GOAL_SECONDS = 30.0


def write_self_predictions(captions: Path, folder: Path) -> Path:
    """The GT captions as a prediction JSONL (ids by the importer's rule)."""
    records = json.loads(captions.read_text(encoding="utf-8"))
    path = folder / "pred.jsonl"
    path.write_text("".join(json.dumps({"id": sample_id(r["image_path"]), "caption": r["gt_response"]}) + "\n"
                            for r in records), encoding="utf-8")
    return path


def write_shifted_predictions(captions: Path, folder: Path) -> Path:
    """Each image gets the next image's caption (another image's text: the slow case)."""
    records = json.loads(captions.read_text(encoding="utf-8"))
    path = folder / "pred_shifted.jsonl"
    lines = [json.dumps({"id": sample_id(r["image_path"]), "caption": records[(i + 1) % len(records)]["gt_response"]})
             for i, r in enumerate(records)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def timed(label: str, fn, timings: dict[str, float]):
    started = time.perf_counter()
    value = fn()
    timings[label] = time.perf_counter() - started
    return value


def caption_inputs(captions: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """References and hypotheses (the same captions) with boxes stripped, as the runner feeds them."""
    records = json.loads(captions.read_text(encoding="utf-8"))
    refs = {sample_id(r["image_path"]): [strip_boxes(r["gt_response"])] for r in records}
    return refs, {k: v[0] for k, v in refs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, default=DEFAULT_CAPTIONS, help="SA-Pancap caption JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write metrics.json etc. here")
    parser.add_argument("--no-meteor", action="store_true", help="skip the METEOR stage")
    args = parser.parse_args()
    timings: dict[str, float] = {}
    embedder = timed("load embedding model", lambda: _loaded(get_embedder()), timings)
    with tempfile.TemporaryDirectory() as tmp:
        pred = write_self_predictions(args.captions, Path(tmp))
        result = timed("PancapScore GT vs GT", lambda: evaluate(
            pred, args.captions, EvalOptions(caption_metrics=False), embedder=embedder), timings)
        shifted_pred = write_shifted_predictions(args.captions, Path(tmp))
        shifted = timed("PancapScore perturbed", lambda: evaluate(
            shifted_pred, args.captions, EvalOptions(caption_metrics=False), embedder=embedder), timings)
    refs, hyps = caption_inputs(args.captions)
    scores = timed("BLEU-4 / CIDEr-D / ROUGE-L", lambda: {
        "BLEU-4": bleu(refs, hyps), "CIDEr-D": cider_d(refs, hyps), "ROUGE-L": rouge_l(refs, hyps)}, timings)
    available, note = meteor_status()
    if available and not args.no_meteor:
        scores["METEOR"] = timed("METEOR (Java)", lambda: meteor(refs, hyps), timings)
    else:
        print(note if not available else "METEOR skipped (--no-meteor)")
    result.metrics["caption_metrics"] = scores
    result.metrics["notes"] = [n for n in result.metrics["notes"] if n != "caption metrics disabled"] + [note]
    if args.out:
        write_outputs(result, args.out)
    print(summary_table(result.metrics))
    for name, res in (("GT vs GT", result), ("perturbed", shifted)):
        scores_line = ", ".join(f"{d} F1 {res.metrics['scores'][d]['f1']:.2f}" for d in ("tag", "loc", "attr"))
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in res.metrics["stage_seconds"].items())
        print(f"{name:<10} {scores_line}; inside evaluate(): {stages}")
    for name in ("PancapScore GT vs GT", "PancapScore perturbed"):
        verdict = "within" if timings[name] <= CASE_GOAL_SECONDS else "OVER"
        print(f"{name:<30} {timings[name]:7.2f} s ({verdict} the {CASE_GOAL_SECONDS:.0f} s goal)")
    ratio = timings["PancapScore perturbed"] / max(timings["PancapScore GT vs GT"], 1e-9)
    print(f"perturbed / GT-vs-GT time ratio (same process, same load): {ratio:.2f}")
    total = sum(timings.values())
    for label, seconds in timings.items():
        print(f"{label:<30} {seconds:7.2f} s")
    verdict = "within" if total <= GOAL_SECONDS else "OVER"
    print(f"{'total':<30} {total:7.2f} s ({verdict} the {GOAL_SECONDS:.0f} s goal; {len(result.images)} images)")


def _loaded(embedder):
    embedder.encode(["warm-up"])  # forces the lazy model load into this stage
    return embedder


if __name__ == "__main__":
    main()
