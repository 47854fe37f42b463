#!/usr/bin/env bash
# Issue #25, guidance on the goal model (DiT-T/1 w192, 2 h): CFG with a guidance interval (no guidance
# for t < 0.3, t = 0 noise) and autoguidance by the same run's 15- and 30-minute checkpoints; scored like
# fid_curves.py (446 samples vs the 446 held-out emoji, Heun 10, EMA). Resumable (a finished setting is skipped).
# Usage: experiments/emoji/guidance_interval.sh [RUN_DIR]   (default outputs/emoji25/dit_t1w192)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
run=${1:-outputs/emoji25/dit_t1w192}
score() {  # name, overrides...
  local out=$run/guidance/$1; shift
  [ -f "$out/metrics.json" ] || .venv/bin/python -m latent_flow.evaluate ckpt_path=$run/checkpoints/last.ckpt \
      num_samples=446 batch_size=132 sampler=heun sampler.steps=10 "metrics=[fid,kid]" \
      evaluation.reference_stats=outputs/reference/emoji64_val_design out_dir=$out hydra.run.dir=$out/hydra "$@"
  .venv/bin/python -c "import json; m=json.load(open('$out/metrics.json'))['metrics']; print('$(basename $out): FID %.1f KID %.4f' % (m['fid'], m['kid_mean']))"
}
score cfg3_interval cfg_scale=3.0 "cfg_interval=[0.3,1.0]"
score cfg4_interval cfg_scale=4.0 "cfg_interval=[0.3,1.0]"
guide=$(ls $run/checkpoints/step_*.ckpt | head -1)   # the 15-minute checkpoint
score autoguidance2 guidance=autoguidance guide_ckpt_path=$guide cfg_scale=2.0
score autoguidance3 guidance=autoguidance guide_ckpt_path=$guide cfg_scale=3.0
guide30=$(ls $run/checkpoints/step_*.ckpt | sed -n 2p)   # the 30-minute checkpoint
score autoguidance2_guide30 guidance=autoguidance guide_ckpt_path=$guide30 cfg_scale=2.0
score autoguidance4 guidance=autoguidance guide_ckpt_path=$guide cfg_scale=4.0
