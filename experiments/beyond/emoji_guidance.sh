#!/usr/bin/env bash
# Guidance and samplers on the emoji study's best recipe (experiments/emoji: TAEF2 latents, DiT-T/1,
# logit-normal t, lr 1e-3, 600 steps), scored like the study: FID@396 vs the 396 held-out emoji.
#   experiments/beyond/emoji_guidance.sh RUN_DIR REFERENCE_DIR OUT_DIR
# RUN_DIR: a run of `+experiment=emoji64_taef2 path=condot_logitnormal trainer.max_time=null trainer.max_steps=600`
# (experiments/emoji/run_sweep.sh) with checkpoints at steps 300 and 600; the step-300 checkpoint is the
# autoguidance guide (the same run at half its training: a weaker model of the same latents).
set -euo pipefail
RUN=${1:?run dir}; REF=${2:?reference stats dir}; OUT=${3:?out dir}
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR="${LATENT_FLOW_TAEF2_DIR:-$(realpath ../shared/weights/taef2)}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MAIN=$RUN/checkpoints/step_0000600.ckpt GUIDE=$RUN/checkpoints/step_0000300.ckpt
ev() { name=$1; shift; .venv/bin/python -m latent_flow.evaluate ckpt_path=$MAIN num_samples=396 batch_size=132 \
    "metrics=[fid,kid]" evaluation.reference_stats=$REF out_dir=$OUT/$name "$@" > $OUT/$name.log 2>&1; echo "done $name"; }
mkdir -p "$OUT"
ev autoguidance_w2 sampler=heun sampler.steps=10 guidance=autoguidance guide_ckpt_path=$GUIDE cfg_scale=2.0
ev cfg1 sampler=heun sampler.steps=10 cfg_scale=1.0
ev autoguidance_w1.5 sampler=heun sampler.steps=10 guidance=autoguidance guide_ckpt_path=$GUIDE cfg_scale=1.5
ev sde_cfg2 sampler=euler_maruyama sampler.steps=20 sampler.diffusion=1.0 cfg_scale=2.0
ev cfg2_interval sampler=heun sampler.steps=10 cfg_scale=2.0 "cfg_interval=[0.3,1.0]"
ev heun5_cfg2 sampler=heun sampler.steps=5 cfg_scale=2.0
