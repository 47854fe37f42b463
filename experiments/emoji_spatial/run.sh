#!/usr/bin/env bash
# Issue #26 arms: semantic-map-to-emoji and emoji inpainting on the honest (split_by=design) split, with the
# emoji recipe's best arm (experiments/emoji/run_recipe.sh fid_latent: TAEF2 latents, DiT-T/1 width 192, lr 4e-3, bf16
# autocast, fused AdamW), one thread, a 2-hour training budget (trainer.max_time), checkpoints every 15 minutes
# of training, power-EMA snapshots for post-hoc EMA. The latent cache is built first (not part of the budget):
# semantic ~5 min of one core (the maps ride along), inpaint ~25 min (4 masks per image, each encoded with its
# flip). Resume an interrupted arm: the same command with
#   ckpt_path=outputs/emoji_spatial/<arm>/checkpoints/last.ckpt
# Usage: experiments/emoji_spatial/run.sh ARM [extra overrides...]
#   ARM: semantic (+experiment=emoji64_semantic) | semantic_label (+experiment=emoji64_semantic_label: map + group)
#        | inpaint (+experiment=emoji64_inpaint)
set -euo pipefail
cd "$(dirname "$0")/../.."
export LATENT_FLOW_TAEF2_DIR=${LATENT_FLOW_TAEF2_DIR:-$PWD/../shared/weights/taef2}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
arm=${1:?usage: experiments/emoji_spatial/run.sh semantic|semantic_label|inpaint [overrides...]}; shift
case $arm in
  semantic) experiment=emoji64_semantic ;;
  semantic_label) experiment=emoji64_semantic_label ;;
  inpaint) experiment=emoji64_inpaint ;;
  *) echo "unknown arm '$arm': semantic | semantic_label | inpaint" >&2; exit 2 ;;
esac
exec .venv/bin/python -m latent_flow.train +experiment=$experiment +backbone.hidden_size=192 optim.lr=4.0e-3 \
  trainer.precision=bf16-mixed optim.fused=true trainer.max_time=00:02:00:00 \
  callbacks.model_checkpoint.train_time_interval.minutes=15 samples.every_n_steps=2000 \
  data.num_workers=0 hydra.run.dir=outputs/emoji_spatial/$arm "$@"
