#!/usr/bin/env bash
# FlowTurbo on emoji (issue #27 item 1): train a velocity refiner for a trained emoji TAEF2 checkpoint, then score
# and time Heun / FlowTurbo / dopri5 / autoguidance with measure.py (FID / KID @446 vs the held-out emoji).
# Usage: experiments/emoji_flowturbo/run.sh BASE_CKPT [OUT=outputs/emoji_flowturbo/<run name>] [measure.py options...]
#   GUIDE=<earlier checkpoint of the same run>  autoguidance settings (default: the run's first step_*.ckpt)
#   REFINER_STEPS=1500                           refiner training steps (batch 64)
# Resumable: a finished refiner (checkpoints/last.ckpt) is not trained again, scored settings are not resampled.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 BASE_CKPT [OUT] [measure.py options]   (BASE_CKPT must be an existing flow checkpoint)" >&2
  exit 2
fi
base=$1
run_name=$(basename "$(dirname "$(dirname "$base")")")_$(basename "$base" .ckpt)
out=${2:-outputs/emoji_flowturbo/$run_name}
shift $(( $# >= 2 ? 2 : 1 ))
steps=${REFINER_STEPS:-1500}
guide=${GUIDE-$(ls "$(dirname "$base")"/step_*.ckpt 2>/dev/null | head -1)}
if [ "$guide" = "$base" ]; then guide=""; fi   # a guide must be another (earlier, weaker) checkpoint

# (1) the refiner: one DiT block of the base, 2C input channels, the base frozen (EMA weights)
if [ ! -f "$out/refiner/checkpoints/last.ckpt" ]; then
  start=$(date +%s)
  resume=()
  [ -f "$out/refiner/checkpoints/interrupted.ckpt" ] && resume=("ckpt_path=$out/refiner/checkpoints/interrupted.ckpt")
  $PY -m latent_flow.train +experiment=emoji64_refiner base_ckpt_path="$base" trainer.max_steps="$steps" \
      data.num_workers=0 hydra.run.dir="$out/refiner" "${resume[@]}"
  echo "refiner: $steps steps in $(( $(date +%s) - start )) s (OMP_NUM_THREADS=$OMP_NUM_THREADS)" | tee "$out/refiner_time.txt"
fi

# (2) scores (446 samples per setting) and interleaved latency rounds
guide_args=()
[ -n "$guide" ] && guide_args=(--guide "$guide")
$PY experiments/emoji_flowturbo/measure.py --ckpt "$base" --refiner "$out/refiner/checkpoints/last.ckpt" \
    "${guide_args[@]}" --out "$out/measure" --floor 85.05 "$@"
