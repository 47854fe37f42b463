"""Quick-start training steps: the 2026-12-06 layout against the 2026-12-04 one, side by side in one process.

Times the training steps of `make train` (forward, backward, AdamW step; the flow step also updates
the EMA), alternating the variants in rounds and keeping each variant's best round, so background
load hits all alike, and prints ms/step and samples/s of each, and each variant's throughput against
the 2026-12-04 step of its stage:

  autoencoder : AutoencoderModule (KL AE base 16, mult (1,2), 2 latent channels, channels_last), fp32,
                batch 64 (2026-12-04) and batch 32 (2026-12-05: 1,100 steps instead of 600)
  flow        : UNet-XS, label-conditional, on 2x16x16 latents: fp32 batch 64 (2026-12-04), bf16
                autocast batch 64, fp32 batch 128, bf16 autocast batch 128 (2026-12-05, the recipe's
                trainer.precision=bf16-mixed), and the same with fused AdamW (2026-12-06, optim.fused=true);
                since 2026-12-06 every variant's attention runs in fp32 (backbones/attention.py,
                benchmarks/attention_cpu.py)

    .venv/bin/python benchmarks/quickstart_speed.py                 # threads = torch default
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quickstart_speed.py --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _time(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def autoencoder_step(batch_size: int):
    from latent_flow.training.autoencoder import AutoencoderModule

    torch.manual_seed(0)
    images = torch.rand(batch_size, 3, 32, 32) * 2 - 1
    module = AutoencoderModule(channel_mult=(1, 2), latent_channels=2, base_channels=16, channels_last=True)
    opt = torch.optim.AdamW(module.autoencoder.parameters(), lr=1e-3)

    def step():
        loss = module.compute_losses(images)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def flow_step(batch_size: int, bf16: bool, fused: bool = False):
    from latent_flow.backbones.unet import unet_preset
    from latent_flow.training.ema import EMA

    torch.manual_seed(0)
    net = unet_preset("UNet-XS", input_size=16, in_channels=2, num_classes=5, class_dropout_prob=0.1)
    x1 = torch.randn(batch_size, 2, 16, 16)
    y = torch.randint(0, 5, (batch_size,))
    ema = EMA(net, decay=0.9999, warmup=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=fused or None)

    def step():
        x0 = torch.randn_like(x1)
        t = torch.rand(batch_size)
        tb = t[:, None, None, None]
        x_t = (1 - tb) * x0 + tb * x1
        # as Lightning's bf16-mixed: autocast around the forward, the loss in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = net(x_t, t, y)
        loss = F.mse_loss(pred.float(), x1 - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(net)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each variant's best is kept")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    stages = {
        "autoencoder": {
            ("fp32", 64, "2026-12-04"): autoencoder_step(64),
            ("fp32", 32, "2026-12-05"): autoencoder_step(32),
        },
        "flow UNet-XS": {
            ("fp32", 64, "2026-12-04"): flow_step(64, bf16=False),
            ("bf16", 64, ""): flow_step(64, bf16=True),
            ("fp32", 128, ""): flow_step(128, bf16=False),
            ("bf16", 128, "2026-12-05"): flow_step(128, bf16=True),
            ("bf16", 128, "2026-12-06: fused AdamW (optim.fused=true)"): flow_step(128, bf16=True, fused=True),
        },
    }
    for stage, steps in stages.items():
        best = {key: float("inf") for key in steps}
        for _ in range(args.rounds):
            for key, step in steps.items():
                best[key] = min(best[key], _time(step, args.steps, args.warmup))
        base = next(iter(steps))
        base_rate = base[1] / best[base]
        for key, seconds in best.items():
            precision, batch, layout = key
            rate = batch / seconds
            print(
                f"{stage:13s} {precision} batch {batch:3d} {seconds * 1e3:7.1f} ms/step {rate:7.0f} samples/s "
                f"{rate / base_rate:5.2f}x  {layout}",
                flush=True,
            )


if __name__ == "__main__":
    main()
