"""Evaluation speed: GT vs GT on the 500 SA-Pancap validation captions, offline mode, stage by stage.

    .venv/bin/python benchmarks/eval_speed.py [--captions PATH] [--out DIR] [--no-meteor]

Prints the seconds of each stage (embedding model load, PancapScore over 500 images, caption metrics,
METEOR) and the total, against the goal of <= 60 s on 2 CPU cores, plus the scores (tag F1 = loc F1 = 100
is the sanity check: a caption compared with itself).
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


def write_self_predictions(captions: Path, folder: Path) -> Path:
    """The GT captions as a prediction JSONL (ids by the importer's rule)."""
    records = json.loads(captions.read_text(encoding="utf-8"))
    path = folder / "pred.jsonl"
    path.write_text("".join(json.dumps({"id": sample_id(r["image_path"]), "caption": r["gt_response"]}) + "\n"
                            for r in records), encoding="utf-8")
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
        result = timed("PancapScore (offline)", lambda: evaluate(
            pred, args.captions, EvalOptions(caption_metrics=False), embedder=embedder), timings)
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
    print("inside evaluate():", ", ".join(f"{k} {v:.2f} s" for k, v in result.metrics["stage_seconds"].items()))
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
