#!/usr/bin/env bash
# Sampling-side choices on one checkpoint of the recipe runs (issue #25): CFG scale, guidance interval,
# raw vs EMA weights; FID / KID @446 vs the 446 held-out emoji (split_by=design), Heun 10 steps (20 NFE).
# Usage: experiments/emoji/guidance_sweep.sh CKPT OUT_DIR [SETTING ...]
#   SETTING: name:override[,override...]  e.g. cfg3:cfg_scale=3.0  raw:use_ema=false
# Every setting that already has OUT_DIR/<name>/metrics.json is skipped (resumable).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ckpt=$1; out=$2; shift 2
for setting in "$@"; do
  name=${setting%%:*}; overrides=${setting#*:}
  [[ -f $out/$name/metrics.json ]] && continue
  IFS=',' read -r -a extra <<< "$overrides"
  .venv/bin/python -m latent_flow.evaluate ckpt_path="$ckpt" num_samples=446 batch_size=132 sampler=heun \
    sampler.steps=10 cfg_scale=2.0 "metrics=[fid,kid]" evaluation.reference_stats=outputs/reference/emoji64_val_design \
    out_dir="$out/$name" hydra.run.dir="$out/$name/hydra" "${extra[@]}"
done
