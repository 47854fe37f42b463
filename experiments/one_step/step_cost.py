"""Training-step cost of the flow-map objective against the flow objective on the quick start, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/one_step/step_cost.py [--rounds 5] [--steps 10] [overrides...] [--only NAME...]

Builds the quick start's ``LatentFlowModule`` (``python -m latent_flow.train``'s default config, plus any
Hydra ``overrides``) eight times, with ``objective=flow``, ``objective=meanflow objective.cfg_scale=2.0`` (the
run.sh setting: its JVP through the backbone, on the pairs with s < t, is the extra cost), the self-distillation
by half jumps (``objective.target=shortcut``: two forward passes without gradient on a quarter of the rows), the
same with the teacher's velocity (``objective.velocity=teacher``) and with the teacher's ODE on the jumps of at
least 1/2 too (``objective.shortcut_ode_from=0.5``), and
the distillation along the teacher's ODE
(``objective.target=ode``: the teacher's Heun steps are the extra cost), the latter with distribution matching
(``objective.dmd_weight=1``) and with DMD2's adversarial term as well (``objective.gan_weight=1``: a discriminator head
on the fake flow's features, real latents against the student's samples), and times full steps (loss, backward, fused
AdamW, EMA update) under the quick start's bf16 autocast on a batch of its size, alternating them for
``--rounds`` rounds and keeping each one's best, so machine load hits both alike. The ratio sets the
from-scratch flow map's step count at the flow run's training compute (``run.sh``: ``STEPS``).
"""

from __future__ import annotations

import argparse
import time

import torch

LATENT_SHAPE = (2, 16, 16)  # the quick start's autoencoder latents (2 channels at 16x16)
NUM_CLASSES = 5  # shapes


def _module(overrides: list[str]):
    from latent_flow.cli.run import bare_module, compose_train_config

    cfg = compose_train_config(overrides)
    torch.manual_seed(0)
    module = bare_module(cfg, LATENT_SHAPE, NUM_CLASSES)
    return module, int(cfg.data.batch_size), str(cfg.trainer.precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", nargs="+", default=None, help="time the flow and the variants named by these")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    # run.sh (e): the teacher's guided ODE over wide pairs, a quarter grid jumps (the teacher's weights do not change
    # the cost: a fresh one is timed)
    ode = [
        "objective=meanflow",
        "objective.cfg_scale=2.0",
        "objective.velocity=teacher",
        "objective.target=ode",
        "objective.distinct_fraction=0.75",
        "objective.time_sampler={name: uniform}",
        "objective.grid_fraction=0.25",
    ]
    shortcut = [
        "objective=meanflow",
        "objective.cfg_scale=2.0",
        "objective.target=shortcut",
        "objective.weight_power=0.0",
        "objective.distinct_fraction=0.0",
        "objective.grid_fraction=0.25",
        "objective.grid_steps=[1,2,4,8,16,32,64,128]",
    ]
    variants = {
        "flow": ["objective=flow"],
        "meanflow (CFG folded in)": ["objective=meanflow", "objective.cfg_scale=2.0"],
        # run.sh (g): self-distillation by half jumps on shortcut models' dyadic grids (no JVP, no teacher)
        "shortcut (target=shortcut, dyadic)": shortcut,
        "shortcut, the teacher's velocity (velocity=teacher)": [*shortcut, "objective.velocity=teacher"],
        # run.sh (h): and the teacher's guided ODE as the target of the jumps >= 1/2
        "shortcut + teacher ODE on jumps >= 1/2": [
            *shortcut,
            "objective.velocity=teacher",
            "objective.shortcut_ode_from=0.5",
        ],
        "distilled along the ODE (target=ode)": ode,
        # run.sh (f): the same plus distribution matching (the student's 1-step samples, the teacher's guided
        # velocity, the fake flow's velocity and its flow-matching step)
        "ODE + distribution matching (dmd_weight=1)": [*ode, "objective.dmd_weight=1.0"],
        # and DMD2's adversarial term (one discriminator pass on the noised samples and real latents, one backward
        # to the samples for the generator's gradient)
        "ODE + DMD + adversarial (gan_weight=1)": [*ode, "objective.dmd_weight=1.0", "objective.gan_weight=1.0"],
    }
    if args.only:  # the flow (the reference) and the variants whose names contain one of these
        variants = {k: v for k, v in variants.items() if k == "flow" or any(o in k for o in args.only)}
    setups = {}
    for name, extra in variants.items():
        module, batch, precision = _module([*extra, *args.overrides])
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, fused=True)
        data = {"latent": torch.randn(batch, *LATENT_SHAPE), "label": torch.randint(0, NUM_CLASSES, (batch,))}
        setups[name] = (module.train(), opt, data, precision.startswith("bf16"))
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.rounds):
        for name, (module, opt, data, bf16) in setups.items():
            for i in range(args.steps + 2):
                if i == 2:
                    start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss, _ = module.training_loss(data)
                opt.zero_grad()
                loss.backward()
                opt.step()
                module.ema.update(module.backbone)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    print(f"threads: {torch.get_num_threads()}; batch {batch}; precision {precision}")
    print("| objective | ms / step | relative to flow |\n| --- | --- | --- |")
    for name, value in best.items():
        print(f"| {name} | {1000 * value:.0f} | {value / best['flow']:.2f}x |")


if __name__ == "__main__":
    main()
