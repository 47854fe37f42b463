"""Quick-start training steps: NCHW vs channels_last, side by side in one process.

Times the two training steps of `make train` (forward, backward, AdamW step; the flow step
also updates the EMA) in both memory formats, alternating the formats in rounds and keeping
each format's best round, so background load hits both alike; and the same for the steps of the
quick start of 2026-12-03, so that the two layouts are compared in one run:

  autoencoder      : AutoencoderModule (KL AE base 16, mult (1,2), 2 latent channels), batch 64 of 32x32x3
  flow             : UNet-XS, label-conditional, batch 64 of 2x16x16 latents
  autoencoder (old): the same with 1 latent channel (32x32x3 -> 1x16x16), batch 64
  flow (old)       : UNet-T on 2x2 patches (patch_size 2) of 1x16x16 latents, batch 64

    .venv/bin/python benchmarks/quickstart_speed.py                 # threads = torch default
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quickstart_speed.py --steps 10 --rounds 3

Prints ms/step of each format and the speed-up ratio per stage.
"""

from __future__ import annotations

import argparse
import copy
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


def autoencoder_steps(batch_size: int, channel_mult=(1, 2), latent_channels: int = 2):
    from latent_flow.training.autoencoder import AutoencoderModule

    images = torch.rand(batch_size, 3, 32, 32) * 2 - 1
    steps = {}
    for fmt in ("nchw", "channels_last"):
        torch.manual_seed(0)
        module = AutoencoderModule(
            channel_mult=channel_mult,
            latent_channels=latent_channels,
            base_channels=16,
            channels_last=fmt == "channels_last",
        )
        opt = torch.optim.AdamW(module.autoencoder.parameters(), lr=1e-3)

        def step(module=module, opt=opt):
            loss = module.compute_losses(images)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[fmt] = step
    return steps


def flow_steps(batch_size: int, latent_shape=(2, 16, 16), preset: str = "UNet-XS", patch_size: int = 1):
    from latent_flow.backbones.unet import unet_preset
    from latent_flow.training.ema import EMA

    torch.manual_seed(0)
    c, h, w = latent_shape
    base = unet_preset(
        preset, input_size=h, in_channels=c, num_classes=5, class_dropout_prob=0.1, patch_size=patch_size
    )
    x1 = torch.randn(batch_size, c, h, w)
    y = torch.randint(0, 5, (batch_size,))
    steps = {}
    for fmt in ("nchw", "channels_last"):
        net = copy.deepcopy(base)
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        net = net.to(memory_format=mf)
        ema = EMA(net, decay=0.9999, warmup=True)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step(net=net, opt=opt, ema=ema, mf=mf):
            x0 = torch.randn_like(x1)
            t = torch.rand(batch_size)
            tb = t[:, None, None, None]
            x_t = ((1 - tb) * x0 + tb * x1).contiguous(memory_format=mf)
            loss = F.mse_loss(net(x_t, t, y), x1 - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(net)

        steps[fmt] = step
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and format")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each format's best is kept")
    parser.add_argument("--ae-batch", type=int, default=64)
    parser.add_argument("--flow-batch", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for stage, steps in (
        (f"autoencoder f2 2ch (batch {args.ae_batch})", autoencoder_steps(args.ae_batch)),
        (f"flow UNet-XS 2x16x16 (batch {args.flow_batch})", flow_steps(args.flow_batch)),
        (f"old autoencoder f2 1ch (batch {args.ae_batch})", autoencoder_steps(args.ae_batch, (1, 2), 1)),
        (f"old flow UNet-T/2 1x16x16 (batch {args.flow_batch})", flow_steps(args.flow_batch, (1, 16, 16), "UNet-T", 2)),
    ):
        best = {fmt: float("inf") for fmt in steps}
        for _ in range(args.rounds):
            for fmt, step in steps.items():
                best[fmt] = min(best[fmt], _time(step, args.steps, args.warmup))
        ratio = best["nchw"] / best["channels_last"]
        print(
            f"{stage:38s} nchw {best['nchw'] * 1e3:7.1f} ms/step   channels_last "
            f"{best['channels_last'] * 1e3:7.1f} ms/step   speed-up {ratio:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
