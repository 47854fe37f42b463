#!/usr/bin/env bash
# The emoji study's training-side recipe sweep on arm (a), TAEF2 latents (experiments/emoji/README.md,
# "Recipe sweep"): every arm for a fixed 600 steps (not a time budget), checkpoints at steps 300 and
# 600, power-EMA snapshots every 100 steps; then FID@396 of each checkpoint, of post-hoc EMAs of the
# baseline, of its raw weights and of a second sampling seed. As run on the 2-core CPU: two torch
# processes at a time, one thread each (the stages below wait for their jobs).
#   experiments/emoji/run_sweep.sh            (all stages)
#   experiments/emoji/run_sweep.sh round1     (or: round2 | eval | ema)
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR="${LATENT_FLOW_TAEF2_DIR:-$(realpath ../shared/weights/taef2)}"
export OMP_NUM_THREADS=1 WANDB_MODE=offline
PY=.venv/bin/python
OUT=outputs/emoji_sweep
mkdir -p "$OUT/logs"

train() { # ARM [overrides...]
  local arm=$1; shift
  $PY -m latent_flow.train +experiment=emoji64_taef2 \
    trainer.max_time=null trainer.max_steps=600 \
    callbacks.model_checkpoint.train_time_interval=null callbacks.model_checkpoint.every_n_train_steps=300 \
    callbacks.posthoc_ema.every_n_steps=100 data.num_workers=0 \
    "hydra.run.dir=$OUT/$arm" "$@" > "$OUT/logs/$arm.log" 2>&1
}

evaluate() { # CKPT OUT_DIR [overrides...]: the study's FID recipe (396 samples, Heun 10, CFG 2.0, EMA)
  local ckpt=$1 out=$2; shift 2
  mkdir -p "$(dirname "$out")"
  $PY -m latent_flow.evaluate "ckpt_path=$ckpt" num_samples=396 batch_size=132 \
    sampler=heun sampler.steps=10 cfg_scale=2.0 "metrics=[fid,kid]" \
    evaluation.reference_stats=outputs/reference/emoji64_val "out_dir=$out" "$@" \
    > "$out.log" 2>&1
}

data() {
  $PY -m latent_flow.prepare_data emoji sources=[openmoji] resolution=64
  $PY -m latent_flow.reference_stats data=emoji data.dataset.split=val split=all \
    out_dir=outputs/reference/emoji64_val
}

round1() { # the latent cache is built by the first run: start the second once training has begun
  train uniform_lr1e-3 & sleep 420
  train logitnormal_lr1e-3 path=condot_logitnormal & wait
}

round2() { # chosen after round 1: logit-normal won, so the learning rate is swept with it
  train logitnormal_lr2e-3 path=condot_logitnormal optim.lr=2e-3 &
  train logitnormal_lr5e-4 path=condot_logitnormal optim.lr=5e-4 & wait
}

eval_all() {
  local arm step
  # (as run here, the step-300 checkpoints of round 2 were not scored: time ran out)
  for arm in uniform_lr1e-3 logitnormal_lr1e-3 logitnormal_lr2e-3 logitnormal_lr5e-4; do
    for step in 300 600; do
      evaluate "$OUT/$arm/checkpoints/step_0000$step.ckpt" "$OUT/$arm/eval/step$step" &
    done
    wait
  done
  # the noise of the comparison: the baseline's step-600 checkpoint with a second sampling seed
  evaluate "$OUT/uniform_lr1e-3/checkpoints/step_0000600.ckpt" "$OUT/uniform_lr1e-3/eval/step600_seed1" seed=1
}

ema() { # FID vs EMA length from the snapshots of one run (the baseline), at step 600
  local run=$OUT/uniform_lr1e-3 s
  for s in 0.05 0.10 0.20; do
    $PY -m latent_flow.posthoc_ema "ckpt_path=$run/checkpoints/step_0000600.ckpt" sigma_rel=$s \
      "out_path=$run/checkpoints/posthoc_sigma$s.ckpt"
  done
  evaluate "$run/checkpoints/posthoc_sigma0.05.ckpt" "$run/eval/posthoc0.05" &
  evaluate "$run/checkpoints/posthoc_sigma0.10.ckpt" "$run/eval/posthoc0.10" & wait
  evaluate "$run/checkpoints/posthoc_sigma0.20.ckpt" "$run/eval/posthoc0.20" &
  evaluate "$run/checkpoints/step_0000600.ckpt" "$run/eval/step600_raw" use_ema=false & wait
}

if [ $# -eq 0 ]; then set -- data round1 round2 eval ema; fi
for stage in "$@"; do
  case $stage in
    data) data ;; round1) round1 ;; round2) round2 ;; eval) eval_all ;; ema) ema ;;
    *) echo "unknown stage $stage (data | round1 | round2 | eval | ema)" >&2; exit 2 ;;
  esac
done
