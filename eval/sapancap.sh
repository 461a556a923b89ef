#!/usr/bin/env bash
# SA-Pancap val/test protocol for GPU users: PancapChain inference on the split, then PancapScore with the
# official settings (LLM judge, all-mpnet-base-v2 tag embeddings, IoU 0.5, official box rules, WordNet synonyms).
# Nothing is downloaded: every model is a local folder.
#
#   eval/sapancap.sh --model RUN_OR_EXPORT --captions SA-Pancap/val.json --images SA-1B/images \
#       --judge /models/Qwen2.5-14B-Instruct --embed /models/all-mpnet-base-v2 [--out runs/sapancap_val] \
#       [--num-processes 8] [--batch-size 8] [--plan chain|direct|no-discover]
#
# Steps (each resumable: rerun the same command after an interruption):
#   1. pancapchain prepare sapancap   captions + images -> OUT/data/samples.jsonl (+ import_report.json)
#   2. pancapchain infer              the chain over every image -> OUT/preds.jsonl
#      (--num-processes N > 1: accelerate launch, one shard per process, merged in input order)
#   3. pancapchain eval               -> OUT/eval/{metrics.json, per_image.json, summary.md}
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=runs/sapancap; NPROC=1; BATCH=8; PLAN=chain; MODEL=; CAPTIONS=; IMAGES=; JUDGE=; EMBED=
usage() { sed -n '2,14p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2;; --captions) CAPTIONS=$2; shift 2;; --images) IMAGES=$2; shift 2;;
    --judge) JUDGE=$2; shift 2;; --embed) EMBED=$2; shift 2;; --out) OUT=$2; shift 2;;
    --num-processes) NPROC=$2; shift 2;; --batch-size) BATCH=$2; shift 2;; --plan) PLAN=$2; shift 2;;
    -h|--help) usage;; *) echo "eval/sapancap.sh: error: unknown argument $1" >&2; usage;;
  esac
done
for pair in "--model:$MODEL" "--captions:$CAPTIONS" "--images:$IMAGES" "--judge:$JUDGE" "--embed:$EMBED"; do
  [ -n "${pair#*:}" ] || { echo "eval/sapancap.sh: error: ${pair%%:*} is required" >&2; usage; }
done
case "$PLAN" in chain) PLAN_FLAG=();; direct) PLAN_FLAG=(--direct);; no-discover) PLAN_FLAG=(--skip-discover);;
  *) echo "eval/sapancap.sh: error: --plan must be chain, direct or no-discover" >&2; exit 2;; esac
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
DEVICE=cpu; "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && DEVICE=cuda

echo "== 1/3 import $CAPTIONS -> $OUT/data"
[ -s "$OUT/data/samples.jsonl" ] || "$PY" -m pancapchain prepare sapancap --captions "$CAPTIONS" \
  --image-root "$IMAGES" --out "$OUT/data"

echo "== 2/3 $PLAN inference ($NPROC process(es), $DEVICE) -> $OUT/preds.jsonl"
INFER=(-m pancapchain infer --model "$MODEL" --data "$OUT/data/samples.jsonl" --image-root "$IMAGES"
       --out "$OUT/preds.jsonl" --batch-size "$BATCH" --device "$DEVICE" "${PLAN_FLAG[@]}")
if [ "$NPROC" -gt 1 ]; then
  "$PY" -m accelerate.commands.launch --num_processes "$NPROC" "${INFER[@]}"
else
  "$PY" "${INFER[@]}"
fi

echo "== 3/3 PancapScore, official settings -> $OUT/eval"
"$PY" -m pancapchain eval --pred "$OUT/preds.jsonl" --gt "$CAPTIONS" --image-root "$IMAGES" --out "$OUT/eval" \
  --judge "hf:$JUDGE" --embed-model "$EMBED" --iou-threshold 0.5 --embed-threshold 0.5 --box-rules official \
  --judge-device "$DEVICE"
