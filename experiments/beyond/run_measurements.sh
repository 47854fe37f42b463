#!/usr/bin/env bash
# The measurements of experiments/beyond/README.md, one after the other, on one CPU thread.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CKPT=${CKPT:-outputs/train/beyond_quickstart/checkpoints/last.ckpt}
PY=.venv/bin/python
EV="$PY -m latent_flow.evaluate ckpt_path=$CKPT num_samples=500"
run() { echo "=== $1"; shift; /usr/bin/time -f "wall %e s" "$@" 2>&1 | grep -v "it/s\|img/s" | tail -25; }

# ODE vs SDE at the same NFE (50), CFG 2
run heun25        $EV sampler=heun sampler.steps=25 cfg_scale=2.0 hydra.run.dir=outputs/evaluate/beyond_heun25_cfg2
run euler50       $EV sampler=euler sampler.steps=50 cfg_scale=2.0 hydra.run.dir=outputs/evaluate/beyond_euler50_cfg2
for w in 0.5 1.0 2.0; do
  run em50_w$w    $EV sampler=euler_maruyama sampler.steps=50 sampler.diffusion=$w cfg_scale=2.0 \
                  hydra.run.dir=outputs/evaluate/beyond_em50_w${w}_cfg2
done
run em100_w1.0    $EV sampler=euler_maruyama sampler.steps=100 sampler.diffusion=1.0 cfg_scale=2.0 \
                  hydra.run.dir=outputs/evaluate/beyond_em100_w1.0_cfg2
# CFG 2 with a guidance interval (Heun 25)
for iv in "0.0,0.7" "0.3,1.0"; do
  run heun25_iv$iv $EV "cfg_interval=[$iv]" sampler=heun sampler.steps=25 cfg_scale=2.0 \
                  hydra.run.dir=outputs/evaluate/beyond_heun25_cfg2_iv${iv/,/_}
done
run heun25_cfg1   $EV sampler=heun sampler.steps=25 cfg_scale=1.0 hydra.run.dir=outputs/evaluate/beyond_heun25_cfg1
# bits/dim of the 400 held-out latents (Hutchinson, 1 Rademacher probe), and 4 probes on 100 of them
run lik_h1        $PY -m latent_flow.likelihood ckpt_path=$CKPT batch_size=100 hydra.run.dir=outputs/likelihood/beyond_hutch1
run lik_h4        $PY -m latent_flow.likelihood ckpt_path=$CKPT num_samples=100 batch_size=100 num_probes=4 \
                  hydra.run.dir=outputs/likelihood/beyond_hutch4
