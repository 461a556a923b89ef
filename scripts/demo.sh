#!/usr/bin/env bash
# The main job on the embedded synthetic default, on a laptop CPU:
#   set up .venv -> generate scenes -> train the tiny mask recipe (eval loss at start and end)
#   -> run the four-stage chain on the validation images -> score it (PancapScore) -> draw pictures.
# Extra arguments are recipe overrides, e.g. ./scripts/demo.sh train.epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
DATA=${DEMO_DATA:-data/synth}
RUN=${DEMO_RUN:-runs/demo}

echo "== 1/5 synthetic scenes -> $DATA"
$PY -m pancapchain synth --out "$DATA" --n-train "${DEMO_N_TRAIN:-800}" --n-val "${DEMO_N_VAL:-48}" --seed 0 --size 64

echo "== 2/5 train the tiny recipe with the mask head -> $RUN"
$PY train.py --recipe "${DEMO_RECIPE:-recipes/tiny_mask.yaml}" \
  data.train="$DATA/train.jsonl" data.val="$DATA/val.jsonl" train.output_dir="$RUN" train.resume=never "$@"
$PY - "$RUN" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
start, end = m["eval_loss_start"], m["eval_loss_end"]
print(f"eval loss: start {start:.4f} -> end {end:.4f} (drop {100 * (1 - end / start):.1f}%), "
      f"training {m['train_wall_seconds']:.0f} s")
PYEOF

echo "== 3/5 four-stage chain on the validation images -> $RUN/preds.jsonl"
rm -f "$RUN/preds.jsonl"
$PY -m pancapchain infer --model "$RUN" --data "$DATA/val.jsonl" --out "$RUN/preds.jsonl" --batch-size 16

echo "== 4/5 PancapScore and mask metrics -> $RUN/eval"
$PY -m pancapchain eval --pred "$RUN/preds.jsonl" --gt "$DATA/val.jsonl" --out "$RUN/eval"

echo "== 5/5 pictures -> $RUN/pictures/index.html"
$PY -m pancapchain visualize --pred "$RUN/preds.jsonl" --images "$DATA" --out "$RUN/pictures"
