#!/usr/bin/env bash
# Issue #25 recipe runs on the honest (split_by=design) split: two arms side by side, one thread each,
# a 2-hour training budget (trainer.max_time), checkpoints every 15 minutes of training, power-EMA
# snapshots for post-hoc EMA. Resume an interrupted arm: the same command with
#   ckpt_path=outputs/emoji25/<arm>/checkpoints/last.ckpt
# Usage: experiments/emoji/run_recipe.sh ARM [extra overrides...]
#   ARM: unet_s | dit_t1w192 (TAEF2 latents) | dit_t1w192_shift (+ logit-normal times shifted toward
#   noise) | pixel_dit_t2w192 (pixels as 16x16x48 by space-to-depth, DiT-T/2 width 192: the same 64
#   tokens and width as dit_t1w192, so a step costs about the same) | any name (extra overrides only)
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR=${LATENT_FLOW_TAEF2_DIR:-$PWD/../shared/weights/taef2}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
arm=$1; shift
experiment=emoji64_taef2
case $arm in
  unet_s) args=(backbone=unet_s) ;;
  dit_t1w192) args=(backbone=dit_t1 +backbone.hidden_size=192) ;;
  dit_t1w192_shift) args=(backbone=dit_t1 +backbone.hidden_size=192 path=condot_logitnormal_noise) ;;
  pixel_dit_t2w192) experiment=emoji64_pixel; args=(backbone=dit_t2 +backbone.hidden_size=192) ;;
  *) args=() ;;
esac
exec .venv/bin/python -m latent_flow.train +experiment=$experiment "${args[@]}" \
  trainer.precision=bf16-mixed optim.fused=true trainer.max_time=00:02:00:00 \
  callbacks.model_checkpoint.train_time_interval.minutes=15 samples.every_n_steps=2000 \
  data.num_workers=0 hydra.run.dir=outputs/emoji25/$arm "$@"
