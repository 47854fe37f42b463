"""Training images/s and peak memory of the paper's DiT backbones on cached latents (for a GPU).

    .venv/bin/python benchmarks/gpu_train.py                      # DiT-B/2 (imagenet_dit) and DiT-L/2 (ffhq_dit)
    .venv/bin/python benchmarks/gpu_train.py --compile both       # eager and torch.compile side by side
    .venv/bin/python benchmarks/gpu_train.py --device cpu --experiments shapes_dit --latent-size 8 \\
        --batch-size 8 --warmup 1 --steps 2                         # a smoke run on a CPU

Each configuration is what ``python -m latent_flow.train +experiment=NAME`` builds (backbone,
condition, path, optimizer, EMA from the composed Hydra config; the LightningModule and a
Lightning Trainer with ``trainer.precision``, TF32 as in ``tf32: true``), with the dataset
replaced by random latents of the experiment's shape (256 px -> 4x32x32): training from the latent
cache makes data loading negligible, so this measures the backbone + optimizer + EMA step.
``--warmup`` untimed steps (compilation happens there), then ``--steps`` timed steps; prints
images/s and the peak of ``torch.cuda.max_memory_allocated`` per configuration, and writes them
to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

DEFAULT_EXPERIMENTS = ["imagenet_dit", "ffhq_dit"]  # DiT-B/2 (ImageNet, labels), DiT-L/2 (FFHQ)


class RandomLatents(Dataset):
    """A fixed pool of random latents (and labels) standing in for the latent cache."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, size: int = 512) -> None:
        gen = torch.Generator().manual_seed(0)
        self.latents = torch.randn(size, *shape, generator=gen)
        self.labels = torch.randint(0, max(num_classes, 1), (size,), generator=gen)

    def __len__(self) -> int:
        return 1 << 30  # as many steps as asked for

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = i % len(self.latents)
        return {"latent": self.latents[k], "label": self.labels[k]}


class StepTimer(L.Callback):
    """Wall time of the steps after ``warmup`` (synchronised with the device)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(pl_module)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.end = time.perf_counter()


def measure(experiment: str, args, compile_backbone: bool) -> dict:
    from latent_flow.cli.run import bare_module, compose_train_config, configure_torch
    from latent_flow.utils.distributed import resolve_precision

    overrides = [f"compile={str(compile_backbone).lower()}", "optim.cosine=false", "optim.warmup_steps=0"]
    if args.grad_checkpointing:
        overrides.append("backbone.grad_checkpointing=true")
    if args.fused is not None:
        overrides.append(f"optim.fused={args.fused}")
    cfg = compose_train_config([f"+experiment={experiment}", *overrides, *args.override])
    configure_torch(cfg)
    size = args.latent_size or cfg.data.resolution // 8
    shape = (4, size, size)
    # label-conditional paper configs are ImageNet's (1000 classes); the count only sizes the label embedding
    num_classes = 1000 if cfg.condition.get("use_label", cfg.condition.name == "label") else 0
    torch.manual_seed(0)
    model = bare_module(cfg, shape, num_classes, compile=compile_backbone)
    params = sum(p.numel() for p in model.backbone.parameters())
    precision = resolve_precision(args.precision)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = DataLoader(RandomLatents(shape, num_classes), batch_size=args.batch_size, num_workers=0)
    trainer.fit(model, train_dataloaders=loader)
    seconds = timer.end - timer.start
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    return {
        "experiment": experiment,
        "backbone": cfg.backbone.name,
        "parameters_M": round(params / 1e6, 2),
        "latent_shape": list(shape),
        "batch_size": args.batch_size,
        "precision": precision,
        "compile": compile_backbone,
        "grad_checkpointing": bool(args.grad_checkpointing),
        "timed_steps": args.steps,
        "images_per_second": round(args.steps * args.batch_size / seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 4),
        "peak_memory_GiB": None if peak is None else round(peak, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=DEFAULT_EXPERIMENTS)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--precision", default="auto", help="trainer precision: auto (bf16-mixed on a GPU), 32-true, ..."
    )
    parser.add_argument("--compile", default="off", choices=["off", "on", "both"])
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--fused", default=None, choices=["true", "false"], help="optim.fused (AdamW)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-size", type=int, default=None, help="latent side (default: resolution / 8)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for every configuration")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for a smoke run)")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = [measure(exp, args, c) for exp in args.experiments for c in compiles]
    header = "| experiment | backbone | params (M) | latents | batch | precision | compile | images/s | s/step | peak memory (GiB) |"
    print(header)
    print("| --- " * (header.count("|") - 1) + "|")
    for r in rows:
        lat = "x".join(map(str, r["latent_shape"]))
        mem = "-" if r["peak_memory_GiB"] is None else f"{r['peak_memory_GiB']:.2f}"
        print(
            f"| {r['experiment']} | {r['backbone']} | {r['parameters_M']} | {lat} | {r['batch_size']} | "
            f"{r['precision']} | {r['compile']} | {r['images_per_second']} | {r['seconds_per_step']} | {mem} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
