#!/usr/bin/env bash
# Issue #25 recipe runs on the honest (split_by=design) split: two arms side by side, one thread each,
# a 2-hour training budget (trainer.max_time), checkpoints every 15 minutes of training, power-EMA
# snapshots for post-hoc EMA. Resume an interrupted arm: the same command with
#   ckpt_path=outputs/emoji25/<arm>/checkpoints/last.ckpt
# Usage: experiments/emoji/run_recipe.sh ARM [extra overrides...]
#   ARM: unet_s | dit_t1w192 (TAEF2 latents) | dit_t1w192_shift (+ logit-normal times shifted toward
#   noise) | pixel_dit_t2w192 (pixels as 16x16x48 by space-to-depth, DiT-T/2 width 192: the same 64
#   tokens and width as dit_t1w192, so a step costs about the same) | any name (extra overrides only)
#   Equal-step arms (issue #25 recipe table; the same DiT as dit_t1w192, stopped at the baseline's 60-minute
#   step count 2,771 and compared with its step_0002771.ckpt): dit_t1w192_lr4e-3 (lr 4e-3) | dit_t1w192_noflip
#   (no mirror augmentation) | dit_t1w192_cosine (cosine decay to 0.1x over the 2,771 steps) | dit_t1w192_b128
#   (batch 128, 1,386 steps: the same images seen) | dit_t1w192_fp32 (no bf16 autocast) | dit_t2w192_128px
#   (OpenMoji at 128 px: TAEF2 16x16x32 latents, DiT-T/2 width 192: 64 tokens again; STEPS=1171 / 1680 / 2000
#   stops at another checkpoint step of the baseline)
#   dit_t1w192_lr4e-3_2h: the 2-hour recipe with lr 4e-3 (the equal-step winner)
#   Item 4, curves from the FID callback (callbacks=[posthoc_ema,eval_fid]: FID / KID of 446 samples, Heun 10,
#   CFG 2, EMA, against the 446 held-out images every FID_EVERY=1000 steps and at the end; its evaluations count
#   in the 2-hour wall clock; metrics.json -> eval_history holds train_seconds, the time axis):
#   fid_latent (dit_t1w192 at lr 4e-3) | fid_pixel (pixel_dit_t2w192 at lr 4e-3: the same recipe)
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
  dit_t1w192_lr4e-3_2h) args=(backbone=dit_t1 +backbone.hidden_size=192 optim.lr=4.0e-3) ;;
  dit_t1w192_lr4e-3) args=(backbone=dit_t1 +backbone.hidden_size=192 trainer.max_steps=2771 optim.lr=4.0e-3) ;;
  dit_t1w192_noflip) args=(backbone=dit_t1 +backbone.hidden_size=192 trainer.max_steps=2771 data.flip=false) ;;
  dit_t1w192_cosine) args=(backbone=dit_t1 +backbone.hidden_size=192 trainer.max_steps=2771 optim.cosine=true) ;;
  dit_t1w192_b128) args=(backbone=dit_t1 +backbone.hidden_size=192 trainer.max_steps=1386 data.batch_size=128) ;;
  dit_t1w192_fp32) args=(backbone=dit_t1 +backbone.hidden_size=192 trainer.max_steps=2771) ;;
  dit_t2w192_128px) args=(backbone=dit_t2 +backbone.hidden_size=192 trainer.max_steps=${STEPS:-2771} data.dataset.resolution=128) ;;
  fid_latent) args=(backbone=dit_t1 +backbone.hidden_size=192 optim.lr=4.0e-3) ;;
  fid_pixel) experiment=emoji64_pixel; args=(backbone=dit_t2 +backbone.hidden_size=192 optim.lr=4.0e-3) ;;
  *) args=() ;;
esac
case $arm in
  fid_*) args+=("callbacks=[posthoc_ema,eval_fid]" callbacks.sample_metrics.every_n_steps=${FID_EVERY:-1000}
    callbacks.sample_metrics.num_samples=446 callbacks.sample_metrics.batch_size=223
    callbacks.sample_metrics.reference_stats=${REFERENCE:-outputs/reference/emoji64_val_design}
    callbacks.sample_metrics.legacy_keys=false) ;;
esac
precision=bf16-mixed
[ "$arm" = dit_t1w192_fp32 ] && precision=32-true
exec .venv/bin/python -m latent_flow.train +experiment=$experiment "${args[@]}" \
  trainer.precision=$precision optim.fused=true trainer.max_time=00:02:00:00 \
  callbacks.model_checkpoint.train_time_interval.minutes=15 samples.every_n_steps=2000 \
  data.num_workers=0 hydra.run.dir=outputs/emoji25/$arm "$@"
