#!/usr/bin/env bash
# FID vs NFE per sampling method on emoji, and bits/dim of the latent vs the pixel model
# (experiments/beyond/README.md, "Real images: FID vs NFE" and "bits/dim latent vs pixel").
#   experiments/beyond/emoji_nfe.sh train       # the two models: TAEF2 latents and pixels, 1,200 steps each
#   experiments/beyond/emoji_nfe.sh eval        # FID@396 of every (method, NFE) cell, two at a time
#   experiments/beyond/emoji_nfe.sh likelihood  # bits/dim of 100 held-out emoji under each model
#   .venv/bin/python experiments/beyond/emoji_nfe.py   # the tables and emoji_fid_vs_nfe.png
# Every step skips what is already there (metrics.json / likelihood.json), so a killed run resumes.
# As run on the 2-core CPU: two torch processes at a time, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR="${LATENT_FLOW_TAEF2_DIR:-$(realpath ../shared/weights/taef2)}"
export OMP_NUM_THREADS=1 WANDB_MODE=offline
export PY=.venv/bin/python OUT=${OUT:-outputs/emoji_nfe} REF=outputs/reference/emoji64_val
mkdir -p "$OUT/logs" "$OUT/eval"

train() { # ARM: +experiment=emoji64_ARM (its recipe: logit-normal t, lr 2e-3, EMA 0.999), fixed 1,200 steps
  local arm=$1
  [ -f "$OUT/$arm/checkpoints/step_0001200.ckpt" ] && return 0
  $PY -m latent_flow.train +experiment=emoji64_$arm trainer.max_time=null trainer.max_steps=1200 \
    callbacks.model_checkpoint.train_time_interval=null callbacks.model_checkpoint.every_n_train_steps=300 \
    data.num_workers=0 "hydra.run.dir=$OUT/$arm" > "$OUT/logs/$arm.log" 2>&1
}

ev() { # NAME ARM [overrides...]: the emoji study's FID (396 samples vs the 396 held-out emoji, EMA weights)
  local name=$1 arm=$2; shift 2
  [ -f "$OUT/eval/$name/metrics.json" ] && return 0
  $PY -m latent_flow.evaluate "ckpt_path=$OUT/$arm/checkpoints/step_0001200.ckpt" num_samples=396 batch_size=132 \
    "metrics=[fid,kid]" evaluation.reference_stats=$REF "out_dir=$OUT/eval/$name" "$@" \
    > "$OUT/logs/eval_$name.log" 2>&1 && echo "done $name"
}
export -f ev

jobs_list() { # one line per evaluation: NFE 20 first (the study's setting), then 10, 40 and 6; the pixel model at 20
  local guide="guide_ckpt_path=$OUT/taef2/checkpoints/step_0000300.ckpt" # the better guide at NFE 20 (vs step 600)
  echo "ev auto_heun20 taef2 sampler=heun sampler.steps=10 guidance=autoguidance cfg_scale=2.0 guide_ckpt_path=$OUT/taef2/checkpoints/step_0000600.ckpt"
  for nfe in 20 10 40 6; do
    local s=$((nfe / 2)) # Heun: 2 evaluations per step
    echo "ev ode_heun$nfe taef2 sampler=heun sampler.steps=$s cfg_scale=1.0"
    echo "ev cfg_heun$nfe taef2 sampler=heun sampler.steps=$s cfg_scale=2.0"
    echo "ev interval_heun$nfe taef2 sampler=heun sampler.steps=$s cfg_scale=2.0 'cfg_interval=[0.3,1.0]'"
    echo "ev auto_g300_heun$nfe taef2 sampler=heun sampler.steps=$s guidance=autoguidance cfg_scale=2.0 $guide"
    echo "ev sde_cfg_em$nfe taef2 sampler=euler_maruyama sampler.steps=$nfe sampler.diffusion=1.0 cfg_scale=2.0"
    echo "ev cfg_euler$nfe taef2 sampler=euler sampler.steps=$nfe cfg_scale=2.0"
  done
  echo "ev pixel_cfg_heun20 pixel sampler=heun sampler.steps=10 cfg_scale=2.0" # the pixel model at the study's NFE
}

likelihood() { # ARM: bits/dim of the first 100 held-out emoji (data.dataset.split=val), Hutchinson, 1 probe
  local arm=$1
  [ -f "$OUT/likelihood/$arm/likelihood.json" ] && return 0
  $PY -m latent_flow.likelihood "ckpt_path=$OUT/$arm/checkpoints/step_0001200.ckpt" dataset_split=val \
    num_samples=100 batch_size=50 "hydra.run.dir=$OUT/likelihood/$arm" > "$OUT/logs/likelihood_$arm.log" 2>&1
}

if [ $# -eq 0 ]; then set -- train eval likelihood; fi
for stage in "$@"; do
  case $stage in
    train) train taef2 & train pixel & wait ;;
    eval) jobs_list | xargs -P 2 -I{} bash -c "{}" ;;
    likelihood) likelihood taef2 & likelihood pixel & wait ;;
    *) echo "unknown stage $stage (train | eval | likelihood)" >&2; exit 2 ;;
  esac
done
