#!/usr/bin/env bash
# Issue #25, EMA length: post-hoc EMA (EDM2) of one finished recipe run at several sigma_rel, each scored
# exactly like fid_curves.py scores the time checkpoints (446 samples vs the 446 held-out emoji, Heun 10,
# CFG 2, standard Inception). The run must have been trained with callbacks=posthoc_ema (run_recipe.sh is).
# Usage: experiments/emoji/posthoc_ema_sweep.sh RUN_DIR SIGMA_REL...   e.g. outputs/emoji25/dit_t1w192 0.05 0.1 0.2
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
run=$1; shift
for sigma in "$@"; do
  ckpt=$run/checkpoints/posthoc_sigma${sigma}.ckpt
  [ -f "$ckpt" ] || .venv/bin/python -m latent_flow.posthoc_ema ckpt_path=$run/checkpoints/last.ckpt \
      sigma_rel=$sigma out_path=$ckpt hydra.run.dir=$run/posthoc_ema_logs
  out=$run/ema_sweep/sigma$sigma
  [ -f "$out/metrics.json" ] || .venv/bin/python -m latent_flow.evaluate ckpt_path=$ckpt num_samples=446 \
      batch_size=132 sampler=heun sampler.steps=10 cfg_scale=2.0 "metrics=[fid,kid]" \
      evaluation.reference_stats=outputs/reference/emoji64_val_design out_dir=$out hydra.run.dir=$out/hydra
  .venv/bin/python -c "import json,sys; m=json.load(open('$out/metrics.json'))['metrics']; print('sigma_rel $sigma: FID %.1f KID %.4f' % (m['fid'], m['kid_mean']))"
done
