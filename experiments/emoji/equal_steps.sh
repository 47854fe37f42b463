#!/usr/bin/env bash
# Issue #25 recipe table at equal steps: score each arm's final checkpoint exactly as the baseline's curve
# (fid_curves.py: 446 samples, classes in turn, Heun 10 steps = 20 NFE, CFG 2.0, EMA, FID / KID against the
# 446 held-out emoji), then print the table against dit_t1w192's checkpoint of the same step.
# Usage: experiments/emoji/equal_steps.sh ARM [ARM ...]   (arms of run_recipe.sh; trained already)
#   REFERENCE=outputs/reference/emoji64_val_design by default; the 128 px arm needs its own (emoji128_val_design)
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR=${LATENT_FLOW_TAEF2_DIR:-$PWD/../shared/weights/taef2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for arm in "$@"; do
  run=outputs/emoji25/$arm
  reference=${REFERENCE:-outputs/reference/emoji64_val_design}
  case $arm in *128px*) reference=${REFERENCE128:-outputs/reference/emoji128_val_design} ;; esac
  out=$run/recipe/last
  [ -f "$out/metrics.json" ] || .venv/bin/python -m latent_flow.evaluate ckpt_path=$run/checkpoints/last.ckpt \
    num_samples=446 batch_size=132 sampler=heun sampler.steps=10 cfg_scale=2.0 'metrics=[fid,kid]' \
    evaluation.reference_stats=$reference out_dir=$out hydra.run.dir=$out/hydra
done
.venv/bin/python experiments/emoji/equal_steps_table.py "$@"
