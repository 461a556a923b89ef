#!/usr/bin/env bash
# The main job on the embedded synthetic default, on a laptop CPU:
#   set up .venv -> generate scenes -> pretrain the tiny base's vision tower -> train the tiny chain recipe
#   with its mask head on that base (wall-clock budget)
#   -> run the four-stage chain on held-out scenes -> score it (PancapScore + masks) -> draw pictures.
# Extra arguments are recipe overrides, e.g. ./scripts/demo.sh train.max_seconds=120
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
DATA=${DEMO_DATA:-data/synth}
RUN=${DEMO_RUN:-runs/demo}

echo "== 1/6 synthetic scenes -> $DATA (train: seed 0; held-out val: seed 1)"
$PY -m pancapchain synth --out "$DATA/train" --n-train "${DEMO_N_TRAIN:-4000}" --n-val 0 --seed 0 --size 64 --no-progress
$PY -m pancapchain synth --out "$DATA/val" --n-train 0 --n-val "${DEMO_N_VAL:-200}" --seed 1 --size 64 --no-progress

RECIPE=${DEMO_RECIPE:-recipes/tiny_chain.yaml}
echo "== 2/6 pretrain the tiny base's vision tower (${DEMO_PRETRAIN_SECONDS:-90} s) -> $RUN-base"
$PY -m pancapchain pretrain-tiny --recipe "$RECIPE" --out "$RUN-base" --seconds "${DEMO_PRETRAIN_SECONDS:-90}" \
  --lm-seconds "${DEMO_LM_SECONDS:-0}" data.train="$DATA/train/train.jsonl" "$@"

echo "== 3/6 train the tiny chain recipe (with mask head) on that base -> $RUN"
$PY train.py --recipe "$RECIPE" model.base="$RUN-base" data.train="$DATA/train/train.jsonl" \
  data.val="$DATA/val/val.jsonl" data.max_val_samples=48 train.output_dir="$RUN" train.resume=never "$@"
$PY - "$RUN" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
start, end = m["eval_loss_start"], m["eval_loss_end"]
print(f"eval loss: start {start:.4f} -> end {end:.4f} (drop {100 * (1 - end / start):.1f}%), "
      f"training {m['train_wall_seconds']:.0f} s")
PYEOF

echo "== 4/6 four-stage chain on the held-out scenes -> $RUN/preds.jsonl"
rm -f "$RUN/preds.jsonl"
# stage 1 voted over 18 views (9 shifts by half a patch, and their mirror images): an entity 7 views found is kept
# unless it overlaps one more views found; stage-3 finds kept when 4 views boxed them (the protocol's decoding,
# eval/synthetic_ablation.yaml; docs/learning_quality.md); 6 views of every image per generate call; each view's
# boxes read off the masks the head predicts from its answer before the vote
$PY -m pancapchain infer --model "$RUN" --data "$DATA/val/val.jsonl" --out "$RUN/preds.jsonl" --batch-size 16 \
  --localize-views 9 --localize-mirror --localize-votes 7 --localize-suppress 0.4 --discover-seen 4 \
  --localize-view-batch 6 --localize-mask-boxes

echo "== 5/6 PancapScore and mask metrics -> $RUN/eval"
$PY -m pancapchain eval --pred "$RUN/preds.jsonl" --gt "$DATA/val/val.jsonl" --out "$RUN/eval" --no-caption-metrics

echo "== 6/6 pictures -> $RUN/pictures/index.html"
$PY -m pancapchain visualize --pred "$RUN/preds.jsonl" --images "$DATA/val" --out "$RUN/pictures"

echo "== the (a) row of benchmarks/learning_quality.py for this run:"
$PY benchmarks/learning_quality.py --row "$RUN" "$RUN/preds.jsonl" "$RUN/eval"
