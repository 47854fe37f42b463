#!/usr/bin/env bash
# Seeds 1 and 2 of the FD-shapes comparisons in experiments/beyond/README.md (seed 0: run_measurements.sh).
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CKPT=${CKPT:-outputs/train/beyond_quickstart/checkpoints/last.ckpt}
PY=.venv/bin/python
EV="$PY -m latent_flow.evaluate ckpt_path=$CKPT num_samples=500 cfg_scale=2.0"
for s in 1 2; do
  [ -f outputs/evaluate/beyond_heun25_cfg2_seed$s/metrics.json ] || $EV sampler=heun sampler.steps=25 seed=$s hydra.run.dir=outputs/evaluate/beyond_heun25_cfg2_seed$s
  [ -f outputs/evaluate/beyond_euler50_cfg2_seed$s/metrics.json ] || $EV sampler=euler sampler.steps=50 seed=$s hydra.run.dir=outputs/evaluate/beyond_euler50_cfg2_seed$s
  for w in 0.5 1.0 2.0 4.0; do
    d=outputs/evaluate/beyond_em50_w${w}_cfg2_seed$s
    [ -f $d/metrics.json ] || $EV sampler=euler_maruyama sampler.steps=50 sampler.diffusion=$w seed=$s hydra.run.dir=$d
  done
  d=outputs/evaluate/beyond_em100_w1.0_cfg2_seed$s
  [ -f $d/metrics.json ] || $EV sampler=euler_maruyama sampler.steps=100 sampler.diffusion=1.0 seed=$s hydra.run.dir=$d
  for iv in "0.0,0.7" "0.3,1.0"; do
    d=outputs/evaluate/beyond_heun25_cfg2_iv${iv/,/_}_seed$s
    [ -f $d/metrics.json ] || $EV "cfg_interval=[$iv]" sampler=heun sampler.steps=25 seed=$s hydra.run.dir=$d
  done
done
