#!/usr/bin/env bash
# The emoji study's training runs as made on the 2-core CPU (experiments/emoji/README.md): the given
# arms side by side, one thread each, in the background; logs in outputs/emoji/<arm>.log.
#   experiments/emoji/run_arms.sh taef2 pixel      (then: experiments/emoji/run_arms.sh kl)
# One after the other instead (each arm with the whole machine), a Hydra multirun:
#   .venv/bin/python -m latent_flow.train -m +experiment=emoji64_taef2,emoji64_kl,emoji64_pixel
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR="${LATENT_FLOW_TAEF2_DIR:-$(realpath ../shared/weights/taef2)}"
export OMP_NUM_THREADS=1
mkdir -p outputs/emoji
for arm in "$@"; do
  nohup .venv/bin/python -m latent_flow.train "+experiment=emoji64_${arm}" "hydra.run.dir=outputs/emoji/${arm}" \
    > "outputs/emoji/${arm}.log" 2>&1 &
  echo "started ${arm}: pid $!"
done
