#!/usr/bin/env bash
# One-step generation on the quick start (issue #29 item 5): flow-map models (objective=meanflow) trained from
# scratch, converted from the quick-start flow checkpoint and distilled from it, evaluated at 1 / 2 / 4 NFE with
# sampler=flowmap against the flow's own solvers (Euler 1-8 steps, Heun 2-25 steps, CFG 2).
# Usage: bash experiments/one_step/run.sh [OUT=outputs/one_step]; then
#   python experiments/one_step/table.py OUT --keep experiments/one_step/results.json --plot experiments/one_step/quality_vs_nfe.png
# Threads: set OMP_NUM_THREADS / nice in the environment; every stage writes its own run directory and is
# skipped when its checkpoint (or metrics.json) exists, so the script resumes.
set -euo pipefail
OUT=${1:-outputs/one_step}
PY=${PY:-.venv/bin/python}
FLOW=$OUT/flow/checkpoints/last.ckpt
# equal training compute: a flow-map step (its JVP through the backbone) costs 3.35x a flow step of the quick
# start (experiments/one_step/step_cost.py, 2026-12-07, bf16, batch 128, one thread), so the from-scratch run gets
# 2,200 / 3.35 = 660 steps (since the fifth session the loss computes the JVP for the pairs with s < t only: 2.48x,
# so 660 steps are 0.74x and the flow's compute is 890 steps, the row scratch_ts1_890)
STEPS=${STEPS:-660}

# (0) the flow baseline: the quick start (make train), if not there yet
[ -f "$FLOW" ] || $PY -m latent_flow.train hydra.run.dir="$OUT/flow"

train() { # train RUN overrides...: a flow-map run (guidance folded into the target: CFG 2, the quick start's
    # sampling scale, so flow maps sample with cfg_scale 1), skipped when it has its last checkpoint
    local run=$1
    shift
    [ -f "$OUT/$run/checkpoints/last.ckpt" ] || $PY -m latent_flow.train objective=meanflow objective.cfg_scale=2.0 \
        sampler=flowmap sampler.steps=2 samples.cfg_scale=1.0 hydra.run.dir="$OUT/$run" "$@"
}
CONVERT=(init_from="$FLOW" optim.lr=1.0e-3 optim.warmup_steps=20 trainer.val_check_interval=250)
WIDE=(objective.distinct_fraction=0.75 "objective.time_sampler={name: uniform}")

# (a) from scratch at the quick start's training compute
train scratch trainer.max_steps="$STEPS"
#     the same with a smaller factor on the time embeddings (+backbone.time_scale; 1,000 by default): the JVP
#     differentiates the network along time, and the sinusoids of 1,000 t make it rough (sCM's finding)
train scratch_ts10 trainer.max_steps="$STEPS" +backbone.time_scale=10.0
train scratch_ts1 trainer.max_steps="$STEPS" +backbone.time_scale=1.0
train scratch_ts0.1 trainer.max_steps="$STEPS" +backbone.time_scale=0.1
train scratch_ts1_wide trainer.max_steps="$STEPS" +backbone.time_scale=1.0 objective.distinct_fraction=0.75 \
    "objective.time_sampler={name: uniform}"
train scratch_ts1_seed1 trainer.max_steps="$STEPS" +backbone.time_scale=1.0 seed=1
train scratch_ts0.1_seed1 trainer.max_steps="$STEPS" +backbone.time_scale=0.1 seed=1
#     with a quarter of the pairs the sampling grids' jumps (as in the distillation), two seeds
train scratch_ts1_grid trainer.max_steps="$STEPS" +backbone.time_scale=1.0 objective.grid_fraction=0.25
train scratch_ts1_grid_seed1 trainer.max_steps="$STEPS" +backbone.time_scale=1.0 objective.grid_fraction=0.25 seed=1
#     2x and 4x the flow's training compute
train scratch_ts1_2x trainer.max_steps=$((2 * STEPS)) +backbone.time_scale=1.0
train scratch_ts1_4x trainer.max_steps=$((4 * STEPS)) +backbone.time_scale=1.0
# (g) self-distillation by half jumps (objective.target=shortcut; shortcut models' dyadic grids), from scratch at the
# flow's compute: a step costs 1.69x a flow step (step_cost.py, fifth session), so 2,200 / 1.69 = 1,300 steps.
# sc_*: without the recursion's base case (objective.shortcut_velocity_below=0, the first version); sc_base_*: with it
SHORTCUT=(objective.target=shortcut objective.weight_power=0.0 objective.distinct_fraction=0.0
    objective.grid_fraction=0.25 "objective.grid_steps=[1,2,4,8,16,32,64,128]")
NOBASE=(objective.shortcut_velocity_below=0.0)
train scratch_sc "${SHORTCUT[@]}" "${NOBASE[@]}" trainer.max_steps=1300
train scratch_sc_ts1 "${SHORTCUT[@]}" "${NOBASE[@]}" trainer.max_steps=1300 +backbone.time_scale=1.0
train scratch_sc_base "${SHORTCUT[@]}" trainer.max_steps=1300
train scratch_sc_base_2x "${SHORTCUT[@]}" trainer.max_steps=2600
train scratch_sc_base_4x "${SHORTCUT[@]}" trainer.max_steps=5200
train scratch_sc_base_seed1 "${SHORTCUT[@]}" trainer.max_steps=1300 seed=1
# MeanFlow's identity at the flow's compute under its step cost after the split loss (2.48x: 890 steps)
train scratch_ts1_890 trainer.max_steps=890 +backbone.time_scale=1.0
# (b) converted: the flow checkpoint's backbone + EMA, fine-tuned with the flow-map objective (the paper's pairs:
#     25% distinct, times from the path's logit-normal toward noise), 200 and 1,000 steps
train converted "${CONVERT[@]}" trainer.max_steps=200 trainer.val_check_interval=100
train converted1000 "${CONVERT[@]}" trainer.max_steps=1000
# (c) converted with wide pairs: 75% distinct, both times uniform (long intervals, e.g. the 1-step jump 0 -> 1,
#     are drawn far more often than under the logit-normal), 1,000 steps, then continued to 3,000 (exact resume)
train converted1000_wide "${CONVERT[@]}" "${WIDE[@]}" trainer.max_steps=1000
train converted3000_wide "${CONVERT[@]}" "${WIDE[@]}" trainer.max_steps=3000 \
    ckpt_path="$OUT/converted1000_wide/checkpoints/last.ckpt"
# (d) distilled: the target's velocity is the flow's (its EMA network, frozen: objective.velocity=teacher)
train distilled1000 "${CONVERT[@]}" objective.velocity=teacher trainer.max_steps=1000
# (e) distilled along the teacher's trajectories (objective.target=ode): the target of a pair is the flow's own
#     guided ODE (CFG 2, EMA weights) integrated by Heun over it (10 steps for a pair spanning [0, 1]); wide pairs,
#     a quarter of them the jumps of the 1-, 2- and 4-step sampling grids; adaptive weighting (p = 1) or plain MSE
ODE=(objective.velocity=teacher objective.target=ode objective.grid_fraction=0.25)
train ode1000_grid "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" trainer.max_steps=1000
train ode1000_grid_mse "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 trainer.max_steps=1000
#     one change each at 500 steps: three quarters grid pairs; a 5-step or a 20-step teacher; no grid pairs
train ode500_grid75_mse "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 objective.grid_fraction=0.75 \
    trainer.max_steps=500
train ode500_grid_mse_teacher5 "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 \
    objective.teacher_steps=5 trainer.max_steps=500
train ode500_grid_mse_teacher20 "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 \
    objective.teacher_steps=20 trainer.max_steps=500
train ode500_nogrid_mse "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 objective.grid_fraction=0.0 \
    trainer.max_steps=500
#     continued to 2,500 steps (the cosine schedule stretched to the new end: a warm restart)
train ode2500_grid_mse "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 trainer.max_steps=2500 \
    ckpt_path="$OUT/ode1000_grid_mse/checkpoints/last.ckpt"
# (f) distribution matching (DMD) switched on for 500 more steps of ode1000_grid_mse (init_from a distilled flow
#     map: its teacher comes along, the fake flow starts as the teacher), lr 3e-4; and the same without it
FROM1000=(init_from="$OUT/ode1000_grid_mse/checkpoints/last.ckpt" optim.lr=3.0e-4 optim.warmup_steps=20
    trainer.val_check_interval=250)
train dmd1_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 objective.dmd_weight=1.0 \
    trainer.max_steps=500
train dmd12_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 objective.dmd_weight=1.0 \
    "objective.dmd_steps=[1,2]" trainer.max_steps=500
#     the fake flow at 5x the learning rate (it follows the student's samples faster)
train dmd12_fake5_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 \
    objective.dmd_weight=1.0 "objective.dmd_steps=[1,2]" objective.dmd_fake_lr_scale=5.0 trainer.max_steps=500
train ctrl_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 trainer.max_steps=500
# (g) converted by self-distillation by half jumps: the s = t rows keep the path's velocity (sc_conv) or take the
# teacher's (sc_distil, objective.velocity=teacher); first without the base case, at lr 1e-3 and 3e-4
train sc_conv500 "${CONVERT[@]}" "${SHORTCUT[@]}" "${NOBASE[@]}" trainer.max_steps=500
train sc_distil500 "${CONVERT[@]}" "${SHORTCUT[@]}" "${NOBASE[@]}" objective.velocity=teacher trainer.max_steps=500
train sc_conv1500 "${CONVERT[@]}" "${SHORTCUT[@]}" "${NOBASE[@]}" trainer.max_steps=1500
train sc_conv500_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" "${NOBASE[@]}" optim.lr=3.0e-4 trainer.max_steps=500
train sc_conv2000_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" "${NOBASE[@]}" optim.lr=3.0e-4 trainer.max_steps=2000
train sc_distil2000_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" "${NOBASE[@]}" objective.velocity=teacher optim.lr=3.0e-4 \
    trainer.max_steps=2000
# with the base case (the default): both, 2,000 steps at lr 3e-4
train sc_base_conv2000_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" optim.lr=3.0e-4 trainer.max_steps=2000
train sc_base_distil2000_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" objective.velocity=teacher optim.lr=3.0e-4 \
    trainer.max_steps=2000
#     the conversion continued to 4,000 steps (ckpt_path: exact resume, the cosine schedule stretched: a warm restart)
train sc_base_conv4000_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" optim.lr=3.0e-4 trainer.max_steps=4000 \
    ckpt_path="$OUT/sc_base_conv2000_lr3e-4/checkpoints/last.ckpt"
#     distribution matching on 1-step samples on top of the distilled one (it carries its teacher), 500 steps
train sc_dmd1_from2000 init_from="$OUT/sc_base_distil2000_lr3e-4/checkpoints/last.ckpt" optim.lr=3.0e-4 \
    optim.warmup_steps=20 trainer.val_check_interval=250 "${SHORTCUT[@]}" objective.velocity=teacher \
    objective.dmd_weight=1.0 trainer.max_steps=500
# (h) the hybrid (sixth session): as sc_base_distil2000_lr3e-4, but the jumps of at least 1/2 (the 1- and 2-step grids')
# regress on the teacher's guided ODE (10 Heun steps over [0, 1]) instead of the half jumps
train sc_hybrid_distil2000_lr3e-4 "${CONVERT[@]}" "${SHORTCUT[@]}" objective.velocity=teacher \
    objective.shortcut_ode_from=0.5 optim.lr=3.0e-4 trainer.max_steps=2000
#     trained on the jumps of the shifted grids (objective.grid_shift=2: the 2-step midpoint at 1/3) that the sampler
#     takes with sampler.time_grid=shifted sampler.shift=2: the ODE control continued from 1,000 steps (as
#     ctrl_from1000), the half-jump conversion (as sc_base_conv2000_lr3e-4; the half jumps split at the finer shifted
#     grid's point) and the half jumps from scratch (as scratch_sc_base). The README's sc_base_conv2000_shift2_arith
#     ran the conversion at commit 93e536f, when the half jumps still split at (s + t) / 2 whatever the shift
train ctrl_shift2_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 objective.grid_shift=2.0 \
    trainer.max_steps=500
train sc_base_conv2000_shift2m "${CONVERT[@]}" "${SHORTCUT[@]}" objective.grid_shift=2.0 optim.lr=3.0e-4 \
    trainer.max_steps=2000
train scratch_sc_base_shift2 "${SHORTCUT[@]}" objective.grid_shift=2.0 trainer.max_steps=1300
train sc_base_conv2000_shift2m_seed1 "${CONVERT[@]}" "${SHORTCUT[@]}" objective.grid_shift=2.0 optim.lr=3.0e-4 \
    trainer.max_steps=2000 seed=1 # (the arithmetic-midpoint version's seed 1: README, section 1)
#     without the 1-step grid (its jump is the top of the chain; does leaving it out help the 2-step jumps?)
train sc_base_conv2000_shift2m_no1 "${CONVERT[@]}" "${SHORTCUT[@]}" "objective.grid_steps=[2,4,8,16,32,64,128]" \
    objective.grid_shift=2.0 optim.lr=3.0e-4 trainer.max_steps=2000
#     the conversion continued to 4,000 steps (as sc_base_conv4000_lr3e-4)
train sc_base_conv4000_shift2m "${CONVERT[@]}" "${SHORTCUT[@]}" objective.grid_shift=2.0 optim.lr=3.0e-4 \
    trainer.max_steps=4000 ckpt_path="$OUT/sc_base_conv2000_shift2m/checkpoints/last.ckpt"
# (i) DMD2's adversarial term (seventh session): distribution matching as dmd1_from1000, plus a discriminator head on the
#     fake flow's features telling noised real latents from noised student samples (objective.gan_weight=3; the
#     discriminator's loss at weight 1 in the fake flow's update, its noise levels in [0.5, 0.98], where it learns
#     within a hundred steps); the 1-step samples, and the 1- and 2-step ones on the shifted grids
#     (objective.grid_shift=2: the ODE pairs and the 2-step samples on the grid sampler.time_grid=shifted
#     sampler.shift=2 takes); and the half-jump distillation on shifted grids (as sc_base_conv2000_shift2m with the
#     teacher's velocity: a base that carries its teacher)
GAN=(objective.dmd_weight=1.0 objective.gan_weight=3.0 objective.gan_discriminator_weight=1.0
    "objective.gan_times=[0.5,0.98]")
train gan1_w3_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 "${GAN[@]}" \
    trainer.max_steps=500
train gan12_shift2_w3_from1000 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 "${GAN[@]}" \
    "objective.dmd_steps=[1,2]" objective.grid_shift=2.0 trainer.max_steps=500
train sc_base_distil2000_shift2m "${CONVERT[@]}" "${SHORTCUT[@]}" objective.velocity=teacher objective.grid_shift=2.0 \
    optim.lr=3.0e-4 trainer.max_steps=2000
#     250-step runs (the 500-step ones were better at their step 250): the generator's term at weight 10; and the
#     adversarial distribution matching of the 1- and 2-step samples on top of the shifted-grid half jumps
train gan1_w10_from1000_250 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 "${GAN[@]}" \
    objective.gan_weight=10.0 trainer.max_steps=250
#     the adversarial term without distribution matching's push (dmd_weight 1e-3: the fake flow still learns, as the
#     discriminator's trunk)
train gan1_only_w3_from1000_250 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 "${GAN[@]}" \
    objective.dmd_weight=0.001 trainer.max_steps=250
#     the critic (fake flow and head) at 3x the student's learning rate (DMD2's several critic updates per student one);
#     and the regression continued from ctrl_from1000 for 500 more steps (its 2-NFE score at shift 2)
train gan1_w3_ttur3_from1000_250 "${FROM1000[@]}" "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 "${GAN[@]}" \
    objective.dmd_fake_lr_scale=3.0 trainer.max_steps=250
train ctrl_from1500 init_from="$OUT/ctrl_from1000/checkpoints/last.ckpt" optim.lr=3.0e-4 optim.warmup_steps=20 \
    trainer.val_check_interval=250 "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 trainer.max_steps=500
train ctrl_from2000 init_from="$OUT/ctrl_from1500/checkpoints/last.ckpt" optim.lr=3.0e-4 optim.warmup_steps=20 \
    trainer.val_check_interval=250 "${WIDE[@]}" "${ODE[@]}" objective.weight_power=0.0 trainer.max_steps=500
train sc_gan12_shift2_w3_from2000_250 init_from="$OUT/sc_base_distil2000_shift2m/checkpoints/last.ckpt" optim.lr=3.0e-4 \
    optim.warmup_steps=20 trainer.val_check_interval=250 "${SHORTCUT[@]}" objective.velocity=teacher \
    objective.grid_shift=2.0 "${GAN[@]}" "objective.dmd_steps=[1,2]" trainer.max_steps=250
# (j) eighth session: the ODE distillation from the flow on the shifted grids (objective.grid_shift=2), its pairs starting
#     from the path's states (as before) or on the teacher's guided trajectories from the noise (objective.ode_start=
#     teacher: the states the sampler's second jump starts from)
SHIFT2=(objective.weight_power=0.0 objective.grid_shift=2.0)
train ode1000_shift2_mse "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" "${SHIFT2[@]}" trainer.max_steps=1000
train ode1000_shift2_traj "${CONVERT[@]}" "${WIDE[@]}" "${ODE[@]}" "${SHIFT2[@]}" objective.ode_start=teacher \
    trainer.max_steps=1000
#     500 more steps from ode1000_shift2_mse with the pairs starting on the path (control), on the teacher's
#     trajectories, or where the student's own jump from the noise lands (objective.ode_start=student); two training
#     seeds of the control and the student starts; and the adversarial term on the shifted 2-step samples alone
#     (distribution matching at 1e-3: the discriminator's trunk), 250 steps
FROM1000S2=(init_from="$OUT/ode1000_shift2_mse/checkpoints/last.ckpt" optim.lr=3.0e-4 optim.warmup_steps=20)
for seed in 0 1; do
    sfx=$([ "$seed" = 0 ] || echo "_seed$seed")
    train "ctrl_from1000s2$sfx" "${FROM1000S2[@]}" trainer.val_check_interval=250 "${WIDE[@]}" "${ODE[@]}" \
        "${SHIFT2[@]}" trainer.max_steps=500 seed="$seed"
    train "studc_from1000s2$sfx" "${FROM1000S2[@]}" trainer.val_check_interval=250 "${WIDE[@]}" "${ODE[@]}" \
        "${SHIFT2[@]}" objective.ode_start=student trainer.max_steps=500 seed="$seed"
done
train trajc_from1000s2 "${FROM1000S2[@]}" trainer.val_check_interval=250 "${WIDE[@]}" "${ODE[@]}" "${SHIFT2[@]}" \
    objective.ode_start=teacher trainer.max_steps=500
train gan2only_from1000s2_250 "${FROM1000S2[@]}" trainer.val_check_interval=125 "${WIDE[@]}" "${ODE[@]}" "${SHIFT2[@]}" \
    "${GAN[@]}" objective.dmd_weight=0.001 "objective.dmd_steps=[2]" trainer.max_steps=250

ev() { # ev RUN NAME overrides...: 1,000 samples, FD-shapes and label accuracy from the packaged oracle
    local run=$1 name=$2
    shift 2
    [ -f "$OUT/$run/eval/$name/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$OUT/$run/checkpoints/last.ckpt" \
        num_samples=1000 seed=0 out_dir="$OUT/$run/eval/$name" hydra.run.dir="$OUT/$run/eval/$name/hydra" "$@"
}
for s in 2 5 10 25; do ev flow "heun${s}_cfg2" sampler=heun sampler.steps="$s" cfg_scale=2.0; done
for s in 1 2 4 8; do ev flow "euler${s}_cfg2" sampler=euler sampler.steps="$s" cfg_scale=2.0; done
for run in scratch scratch_ts10 scratch_ts1 scratch_ts0.1 scratch_ts1_wide scratch_ts1_seed1 scratch_ts0.1_seed1 scratch_sc scratch_sc_ts1 scratch_sc_base \
    scratch_sc_base_2x sc_conv500 sc_distil500 sc_conv1500 sc_conv500_lr3e-4 sc_conv2000_lr3e-4 sc_distil2000_lr3e-4 \
    sc_base_conv2000_lr3e-4 sc_base_distil2000_lr3e-4 scratch_sc_base_4x sc_base_conv4000_lr3e-4 sc_dmd1_from2000 \
    scratch_sc_base_seed1 scratch_ts1_890 \
    scratch_ts1_grid scratch_ts1_grid_seed1 scratch_ts1_2x scratch_ts1_4x dmd1_from1000 dmd12_from1000 dmd12_fake5_from1000 ctrl_from1000 converted converted1000 converted1000_wide converted3000_wide distilled1000 ode1000_grid \
    ode1000_grid_mse ode500_grid75_mse ode500_grid_mse_teacher5 ode500_grid_mse_teacher20 ode500_nogrid_mse \
    ode2500_grid_mse gan1_w3_from1000 gan12_shift2_w3_from1000 gan1_w10_from1000_250 sc_base_distil2000_shift2m \
    sc_gan12_shift2_w3_from2000_250 gan1_only_w3_from1000_250 gan1_w3_ttur3_from1000_250 ctrl_from1500 ctrl_from2000; do
    for steps in 1 2 4; do
        ev "$run" "flowmap${steps}" sampler=flowmap sampler.steps="$steps" cfg_scale=1.0
    done
    ev "$run" heun25 sampler=heun sampler.steps=25 cfg_scale=1.0 # the same model as an ODE (t_end = t)
done
ev sc_base_conv2000_shift2m_seed1 flowmap1 sampler=flowmap sampler.steps=1 cfg_scale=1.0
for run in sc_hybrid_distil2000_lr3e-4 ctrl_shift2_from1000 sc_base_conv2000_shift2m scratch_sc_base_shift2 \
    sc_base_conv4000_shift2m sc_base_conv2000_shift2m_no1; do # (h)
    for steps in 1 2 4; do ev "$run" "flowmap${steps}" sampler=flowmap sampler.steps="$steps" cfg_scale=1.0; done
done
# the intermediate checkpoints (quality against training compute), scored as RUN_stepSTEP
ev_step() { # ev_step RUN STEP: flowmap 1 / 2 / 4 of RUN's checkpoint at STEP
    local run=$1 step=$2 steps dir ckpt
    ckpt=$(printf "%s/%s/checkpoints/step_%07d.ckpt" "$OUT" "$run" "$step")
    for steps in 1 2 4; do
        dir="$OUT/${run}_step$step/eval/flowmap$steps"
        [ -f "$dir/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$ckpt" num_samples=1000 seed=0 \
            out_dir="$dir" hydra.run.dir="$dir/hydra" sampler=flowmap sampler.steps="$steps" cfg_scale=1.0
    done
}
for run in dmd1_from1000 dmd12_from1000 dmd12_fake5_from1000 ctrl_from1000 sc_dmd1_from2000 gan1_w3_from1000 \
    gan12_shift2_w3_from1000; do ev_step "$run" 250; done
for run in sc_conv2000_lr3e-4 sc_base_conv2000_lr3e-4; do ev_step "$run" 1000; done # the shortcut conversions halfway
for step in 250 500; do ev_step ode1000_grid_mse "$step"; done
# the 2- and 4-jump grids shifted toward the noise (sampler.time_grid=shifted: t' = u / (u + S (1 - u)); S = 2 puts
# the 2-step midpoint at 1/3), scored as sweepN_shiftS (not plotted)
sweep() { # sweep RUN STEPS SHIFT...
    local run=$1 steps=$2 S
    shift 2
    for S in "$@"; do
        ev "$run" "sweep${steps}_shift$S" sampler=flowmap sampler.steps="$steps" sampler.time_grid=shifted \
            sampler.shift="$S" cfg_scale=1.0
    done
}
sweep ctrl_from1000 2 0.5 0.67 1.5 2.0 3.0 4.0
for run in ode2500_grid_mse sc_base_conv4000_lr3e-4 sc_hybrid_distil2000_lr3e-4; do sweep "$run" 2 1.5 2.0 3.0; done
for run in ctrl_from1000 sc_base_conv4000_lr3e-4; do sweep "$run" 4 1.5 2.0 3.0; done
for steps in 2 4; do sweep ctrl_shift2_from1000 "$steps" 1.5 2.0 3.0; done
for run in sc_base_conv2000_shift2m scratch_sc_base_shift2 sc_base_conv2000_lr3e-4 sc_base_conv4000_shift2m \
    sc_base_conv2000_shift2m_no1 sc_base_conv2000_shift2m_seed1 sc_base_distil2000_shift2m gan12_shift2_w3_from1000 \
    sc_gan12_shift2_w3_from2000_250 ode1000_grid_mse; do
    for steps in 2 4; do sweep "$run" "$steps" 2.0; done
done
# the shifted-grid adversarial run at its step 250, on its grid
for steps in 2 4; do
    dir="$OUT/gan12_shift2_w3_from1000_step250/eval/sweep${steps}_shift2.0"
    [ -f "$dir/metrics.json" ] || $PY -m latent_flow.evaluate \
        ckpt_path="$OUT/gan12_shift2_w3_from1000/checkpoints/step_0000250.ckpt" num_samples=1000 seed=0 out_dir="$dir" \
        hydra.run.dir="$dir/hydra" sampler=flowmap sampler.steps="$steps" sampler.time_grid=shifted sampler.shift=2.0 \
        cfg_scale=1.0
done
# seventh session: the 1-NFE rows at step 250 and the flow's Heun 25 again with sampling seed 1; the 2-NFE shift sweep
# of ctrl_from1000 (sweep2_shift2.0_seed1 below)
for run in gan1_w3_from1000 dmd1_from1000 ctrl_from1000; do # (step 250)
    dir="$OUT/${run}_step250/eval/flowmap1_seed1"
    [ -f "$dir/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$OUT/$run/checkpoints/step_0000250.ckpt" \
        num_samples=1000 seed=1 out_dir="$dir" hydra.run.dir="$dir/hydra" sampler=flowmap sampler.steps=1 cfg_scale=1.0
done
dir="$OUT/flow/eval/heun25_cfg2_seed1"
[ -f "$dir/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$FLOW" num_samples=1000 seed=1 out_dir="$dir" \
    hydra.run.dir="$dir/hydra" sampler=heun sampler.steps=25 cfg_scale=2.0
sweep ctrl_from1000 2 2.5
for run in ctrl_from1500 ctrl_from2000; do for steps in 2 4; do sweep "$run" "$steps" 2.0; done; done
# the from-scratch models at the flow's compute (half jumps; MeanFlow's identity)
sweep scratch_sc_base 2 2.0 3.0
sweep scratch_sc_base 4 1.5 2.0
sweep scratch_ts1_890 2 1.5 2.0 3.0
sweep scratch_ts1_890 4 1.5 2.0
# the FD's sampling spread: the 2-step shift-2 rows again with sampling seed 1
for run in ctrl_from1000 ctrl_shift2_from1000 ctrl_from1500 ctrl_from2000; do
    dir="$OUT/$run/eval/sweep2_shift2.0_seed1"
    [ -f "$dir/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$OUT/$run/checkpoints/last.ckpt" num_samples=1000 \
        seed=1 out_dir="$dir" hydra.run.dir="$dir/hydra" sampler=flowmap sampler.steps=2 sampler.time_grid=shifted \
        sampler.shift=2.0 cfg_scale=1.0
done
# (j) at 1 NFE and on the shift-2 grids (2 NFE with sampling seeds 0 and 1); the control at its step 250
for run in ode1000_shift2_mse ode1000_shift2_traj ctrl_from1000s2 ctrl_from1000s2_seed1 trajc_from1000s2 \
    studc_from1000s2 studc_from1000s2_seed1 gan2only_from1000s2_250; do
    ev "$run" flowmap1 sampler=flowmap sampler.steps=1 cfg_scale=1.0
    for steps in 2 4; do sweep "$run" "$steps" 2.0; done
    ev "$run" sweep2_shift2.0_seed1 sampler=flowmap sampler.steps=2 sampler.time_grid=shifted sampler.shift=2.0 \
        cfg_scale=1.0 seed=1
done
for seed in 0 1; do
    dir="$OUT/ctrl_from1000s2_step250/eval/sweep2_shift2.0$([ "$seed" = 0 ] || echo _seed1)"
    [ -f "$dir/metrics.json" ] || $PY -m latent_flow.evaluate ckpt_path="$OUT/ctrl_from1000s2/checkpoints/step_0000250.ckpt" \
        num_samples=1000 seed="$seed" out_dir="$dir" hydra.run.dir="$dir/hydra" sampler=flowmap sampler.steps=2 \
        sampler.time_grid=shifted sampler.shift=2.0 cfg_scale=1.0
done
$PY experiments/one_step/table.py "$OUT"
