#!/usr/bin/env bash
# One-step generation on the quick start (issue #29 item 5): a flow-map model (objective=meanflow) trained
# from scratch and converted from the quick-start flow checkpoint, evaluated at 1 / 2 / 4 NFE with sampler=flowmap
# against the flow's Heun 25 steps (50 NFE). Usage: bash experiments/one_step/run.sh [OUT=outputs/one_step]
# Threads: set OMP_NUM_THREADS / nice in the environment; every stage writes its own run directory.
set -euo pipefail
OUT=${1:-outputs/one_step}
PY=${PY:-.venv/bin/python}
# equal training compute: a flow-map step (its JVP through the backbone) costs 3.35x a flow step of the quick start
# (experiments/one_step/step_cost.py, 2026-12-07, bf16, batch 128, one thread), so the from-scratch run gets
# 2,200 / 3.35 = 660 steps; the conversion 200 steps = 0.30x the flow run's compute on top of it
STEPS=${STEPS:-660}
CONVERT_STEPS=${CONVERT_STEPS:-200}

# (0) the flow baseline: the quick start (make train), if not there yet
[ -f "$OUT/flow/checkpoints/last.ckpt" ] || $PY -m latent_flow.train hydra.run.dir="$OUT/flow"

# (a) from scratch at the quick start's step budget; guidance folded into the target (CFG 2, the quick start's
#     sampling scale), so the grids sample with cfg_scale 1 and two flow-map steps
[ -f "$OUT/scratch/checkpoints/last.ckpt" ] || $PY -m latent_flow.train objective=meanflow objective.cfg_scale=2.0 \
    trainer.max_steps="$STEPS" sampler=flowmap sampler.steps=2 samples.cfg_scale=1.0 hydra.run.dir="$OUT/scratch"

# (b) converted: the flow checkpoint's backbone + EMA, a short fine-tune with the flow-map objective
[ -f "$OUT/converted/checkpoints/last.ckpt" ] || $PY -m latent_flow.train objective=meanflow objective.cfg_scale=2.0 \
    init_from="$OUT/flow/checkpoints/last.ckpt" trainer.max_steps="$CONVERT_STEPS" optim.lr=1.0e-3 optim.warmup_steps=20 \
    trainer.val_check_interval=100 sampler=flowmap sampler.steps=2 samples.cfg_scale=1.0 hydra.run.dir="$OUT/converted"

ev() { # ev RUN NAME overrides...: 1,000 samples, FD-shapes and label accuracy from the packaged oracle
    local run=$1 name=$2
    shift 2
    [ -f "$OUT/$run/eval/$name/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$OUT/$run/checkpoints/last.ckpt" \
        num_samples=1000 seed=0 out_dir="$OUT/$run/eval/$name" hydra.run.dir="$OUT/$run/eval/$name/hydra" "$@"
}
ev flow heun25_cfg2 sampler=heun sampler.steps=25 cfg_scale=2.0
for run in scratch converted; do
    for steps in 1 2 4; do
        ev "$run" "flowmap${steps}" sampler=flowmap sampler.steps="$steps" cfg_scale=1.0
    done
    ev "$run" heun25 sampler=heun sampler.steps=25 cfg_scale=1.0 # the same model as an ODE (t_end = t)
done
$PY experiments/one_step/table.py "$OUT"
