#!/usr/bin/env bash
# Issue #27 items 3-4: LACE on real emoji (experiments/emoji_compositional/README.md). Every stage is resumable:
# a finished stage is skipped, an interrupted flow run resumes from its last checkpoint, the evaluation keeps the
# rows it has measured.
# Usage: experiments/emoji_compositional/run.sh STAGE [extra arguments of that stage...]
#   judges      the pixel-space judges on the real training emoji, scored on the held-out ones (-> judges.json)
#   flow        the unconditional base flow: +experiment=emoji64_uncond, the emoji recipe's DiT-T/1 width 192
#               (bf16 autocast, fused AdamW, lr 4e-3 as the fid_latent arm), 2 hours (trainer.max_time)
#   classifier  latent attribute classifiers on BASE's path (+experiment=emoji64_classifier: 3 combinations held out)
#   evaluate    requests, label-CFG comparison, edits, grids (-> results.json, grid_lace.png, grid_edit.png)
#   table       print the tables of results.json
#   all         judges, flow (only when BASE is the unconditional flow), classifier, evaluate, table
# Environment: BASE (the LACE base checkpoint; default the unconditional flow of `flow`; the label-conditional
#   emoji model works too: it is sampled with its null label), NAME (the classifier's folder, default: uncond, or
#   cond for another BASE), CFG_FLOW (the label model of the comparison, default outputs/emoji25/fid_latent's
#   last.ckpt), NUM (samples per row, 128), SCALES ("5 10"), STEPS (heun, 10).
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR=${LATENT_FLOW_TAEF2_DIR:-$PWD/../shared/weights/taef2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
PY=.venv/bin/python
OUT=outputs/emoji_compositional
UNCOND=$OUT/flow_uncond/checkpoints/last.ckpt
BASE=${BASE:-$UNCOND}
if [ "$BASE" = "$UNCOND" ]; then NAME=${NAME:-uncond}; else NAME=${NAME:-cond}; fi
CLASSIFIER=$OUT/classifier_$NAME/classifier.pt
CFG_FLOW=${CFG_FLOW:-outputs/emoji25/fid_latent/checkpoints/last.ckpt}
stage=${1:?usage: experiments/emoji_compositional/run.sh judges|flow|classifier|evaluate|table|all [args...]}
shift || true

judges() { $PY experiments/emoji_compositional/judges.py "$@"; }
flow() {
  if grep -qs '"status": "finished"' "$OUT/flow_uncond/metrics.json"; then echo "$OUT/flow_uncond finished: skipped"; return; fi
  local resume=()
  [ -f "$OUT/flow_uncond/checkpoints/last.ckpt" ] && resume=(ckpt_path=$OUT/flow_uncond/checkpoints/last.ckpt)
  [ -f "$OUT/flow_uncond/checkpoints/interrupted.ckpt" ] && resume=(ckpt_path=$OUT/flow_uncond/checkpoints/interrupted.ckpt)
  $PY -m latent_flow.train +experiment=emoji64_uncond backbone=dit_t1 +backbone.hidden_size=192 optim.lr=4.0e-3 \
    trainer.precision=bf16-mixed optim.fused=true trainer.max_time=00:02:00:00 \
    callbacks.model_checkpoint.train_time_interval.minutes=15 data.num_workers=0 \
    hydra.run.dir=$OUT/flow_uncond "${resume[@]}" "$@"
}
classifier() {
  if [ -f "$CLASSIFIER" ]; then echo "$CLASSIFIER exists: skipped"; return; fi
  $PY -m latent_flow.train_classifier +experiment=emoji64_classifier flow_ckpt_path=$BASE num_threads=1 \
    progress=false hydra.run.dir=$OUT/classifier_$NAME "$@"
}
evaluate() {
  local cfg=()
  [ -f "$CFG_FLOW" ] && cfg=(--cfg-flow "$CFG_FLOW")
  # shellcheck disable=SC2086
  $PY experiments/emoji_compositional/evaluate.py --flow "$BASE" --classifier "$CLASSIFIER" "${cfg[@]}" \
    --num "${NUM:-128}" --scales ${SCALES:-5 10} --steps "${STEPS:-10}" --out-dir $OUT/eval_$NAME "$@"
}
table() { $PY experiments/emoji_compositional/evaluate.py --table experiments/emoji_compositional/results.json; }

case $stage in
  judges|flow|classifier|evaluate|table) $stage "$@" ;;
  all)
    judges
    if [ "$BASE" = "$UNCOND" ]; then flow; fi
    classifier
    evaluate
    table ;;
  *) echo "unknown stage '$stage': judges | flow | classifier | evaluate | table | all" >&2; exit 2 ;;
esac
