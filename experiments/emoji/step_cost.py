"""Training-step cost of the emoji study's three arms, measured side by side in one process.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/emoji/step_cost.py [--rounds 3] [--steps 10]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/emoji/step_cost.py --precision [--rounds 5] [--steps 10]

``--precision`` times the recipe's network instead (DiT-T/1 width 192 on TAEF2 8x8x32, batch 64, fused
AdamW) in fp32 and under bf16 autocast (``trainer.precision=bf16-mixed``: ``torch.autocast("cpu",
torch.bfloat16)`` around forward and loss), alternating in the same way.

Each arm's LatentFlowModule (its experiment config: backbone, condition, path, optimiser) takes a
full step on a batch of 64 cached-latent-shaped tensors (loss, backward, AdamW, EMA update); the arms
alternate for ``--rounds`` rounds and each keeps its best round, so machine load hits all alike.
The autoencoder costs nothing per step (latents are cached), so this is the cost of a step.
"""

from __future__ import annotations

import argparse
import time

import torch

ARMS = {"taef2": (32, 8, 8), "kl": (4, 16, 16), "pixel": (48, 16, 16)}


def _module(arm: str, latent_shape, overrides: tuple[str, ...] = ()):
    from latent_flow.cli.run import bare_module, compose_train_config

    cfg = compose_train_config([f"+experiment=emoji64_{arm}", *overrides])
    return bare_module(cfg, latent_shape, num_classes=9), int(cfg.data.batch_size)


def _step(module, opt, data, autocast: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = module._loss(data, use_ema=False)
    opt.zero_grad()
    loss.backward()
    opt.step()
    module.ema.update(module.backbone)


def precision(rounds: int, steps: int) -> None:
    """fp32 against bf16 autocast for the recipe's DiT (one module, one optimiser, alternating rounds)."""
    shape = ARMS["taef2"]
    module, batch = _module("taef2", shape, ("backbone=dit_t1", "+backbone.hidden_size=192"))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, fused=True)
    data = {"latent": torch.randn(batch, *shape), "label": torch.randint(0, 9, (batch,))}
    module.train()
    best = {"fp32": float("inf"), "bf16 autocast": float("inf")}
    for _ in range(rounds):
        for name in best:
            for i in range(steps + 2):
                if i == 2:
                    start = time.perf_counter()
                _step(module, opt, data, autocast=name != "fp32")
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    params = sum(p.numel() for p in module.backbone.parameters())
    print(f"threads: {torch.get_num_threads()}; DiT-T/1 w192, {params / 1e6:.2f}M, batch {batch}, fused AdamW")
    print("| precision | ms / step | relative to bf16 autocast |\n| --- | --- | --- |")
    for name, value in best.items():
        print(f"| {name} | {1000 * value:.0f} | {value / best['bf16 autocast']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", action="store_true", help="fp32 vs bf16 autocast for the recipe's DiT")
    args = parser.parse_args()
    if args.precision:
        precision(args.rounds, args.steps)
        return
    setups = {}
    for arm, shape in ARMS.items():
        module, batch = _module(arm, shape)
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
        data = {"latent": torch.randn(batch, *shape), "label": torch.randint(0, 9, (batch,))}
        setups[arm] = (module, opt, data)
    best = {arm: float("inf") for arm in ARMS}
    for _ in range(args.rounds):
        for arm, (module, opt, data) in setups.items():
            module.train()
            for i in range(args.steps + 2):
                if i == 2:
                    start = time.perf_counter()
                _step(module, opt, data, autocast=False)
            best[arm] = min(best[arm], (time.perf_counter() - start) / args.steps)
    base = best["taef2"]
    print(f"threads: {torch.get_num_threads()}\n| arm | latents | parameters | ms / step | relative to taef2 |")
    print("| --- | --- | --- | --- | --- |")
    for arm, shape in ARMS.items():
        params = sum(p.numel() for p in setups[arm][0].backbone.parameters())
        print(
            f"| {arm} | {'x'.join(map(str, shape))} | {params / 1e6:.2f}M | {1000 * best[arm]:.0f} | {best[arm] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
