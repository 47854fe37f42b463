"""Training the framework's own :class:`KLAutoencoder` with Lightning.

Loss per batch (images ``x`` in [-1, 1], ``z ~ q(z|x)`` or its mean)::

    rec  = l1_weight * mean|x_hat - x| + mse_weight * mean (x_hat - x)^2
    kl   = mean over latent elements of KL(q(z|x) || N(0, I))
    loss = rec + kl_weight * kl

``x_hat`` is the unclamped decoder output. ``kl_weight`` multiplies the KL
averaged per latent element (default 1e-6, the SD-VAE order of magnitude: a
weak pull that keeps the latents bounded without blurring reconstructions).
Optimiser: AdamW, constant learning rate, no warm-up.

:func:`ensure_autoencoder` is the automatic first stage of ``latent_flow.train``: the frozen
autoencoder of a config, trained first (:func:`train_autoencoder`) when it is the framework's own
and none is cached at :func:`autoencoder_cache_path`.

Logged: ``train/rec``, ``train/kl``, ``train/loss`` (every step) and
``val/rec``, ``val/psnr`` (epoch means; PSNR in dB of the clamped posterior-mean
reconstruction, images mapped to [0, 1]).

After fitting, ``export_path`` (if set) receives the autoencoder file written
by :func:`~latent_flow.autoencoders.save_autoencoder`; :meth:`AutoencoderModule.export`
does the same on demand. Load it with ``load_autoencoder("kl", ckpt_path=...)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from latent_flow.autoencoders import load_autoencoder
from latent_flow.autoencoders.base import Autoencoder, save_autoencoder
from latent_flow.autoencoders.kl import KLAutoencoder, diagonal_gaussian_kl
from latent_flow.data.datamodule import ImageDataModule
from latent_flow.training.progress import ProgressBar
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import DEFAULT_WAIT_TIMEOUT, distributed_rank, resolve_precision, wait_until

__all__ = ["AutoencoderModule", "autoencoder_cache_path", "ensure_autoencoder", "psnr", "train_autoencoder"]

log = logging.getLogger(__name__)

#: autoencoder config keys that configure training, not the model
_TRAINING_KEYS = {"training", "train_if_missing", "ckpt_path"}


def psnr(images: Tensor, reference: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (compared in [0, 1]); shape ``(B,)``."""
    mse = ((images.float() - reference.float()) / 2.0).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _images(batch: Any) -> Tensor:
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"AutoencoderModule expects batches with an 'image' key, got keys {sorted(batch)}")
        return batch["image"]
    if isinstance(batch, Tensor):
        return batch
    raise TypeError(f"AutoencoderModule expects dict batches with key 'image', got {type(batch).__name__}")


class AutoencoderModule(pl.LightningModule):
    """LightningModule that trains a :class:`KLAutoencoder`.

    Args:
        in_channels, latent_channels, base_channels, channel_mult,
            num_res_blocks, use_attention: the :class:`KLAutoencoder` config.
        lr: AdamW learning rate (constant). 1e-3 reached a given PSNR in fewer
            steps than 2e-4 / 5e-4 (and 2e-3+ stalled on plateaus) in the
            quick-start measurements.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        l1_weight: weight of the L1 reconstruction term.
        mse_weight: weight of the MSE reconstruction term.
        kl_weight: weight of the per-element KL term.
        sample_posterior: decode a posterior sample during training (True,
            SD-style) or the posterior mean (False).
        export_path: where ``on_train_end`` writes the autoencoder file
            (None: nothing written automatically).
        channels_last: train in the channels_last memory format (weights and images). Same
            numbers within float tolerance (``tests/unit/test_channels_last.py``), and 1.7x
            faster per step on the 2-core CPU (``benchmarks/quickstart_speed.py``). The exported
            file holds contiguous (NCHW) weights either way.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 16,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        use_attention: bool = False,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        l1_weight: float = 1.0,
        mse_weight: float = 1.0,
        kl_weight: float = 1e-6,
        sample_posterior: bool = True,
        export_path: str | os.PathLike[str] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if min(l1_weight, mse_weight, kl_weight) < 0 or l1_weight + mse_weight <= 0:
            raise ValueError(
                f"loss weights must be >= 0 with l1_weight + mse_weight > 0, "
                f"got l1={l1_weight}, mse={mse_weight}, kl={kl_weight}"
            )
        # Plain types only, so that Lightning checkpoints load with weights_only=True.
        self.save_hyperparameters(ignore=["export_path"])
        self.hparams["export_path"] = None if export_path is None else str(export_path)
        self.hparams["channel_mult"] = [int(m) for m in channel_mult]
        self.hparams["betas"] = [float(b) for b in betas]
        self.autoencoder = KLAutoencoder(
            in_channels=in_channels,
            latent_channels=latent_channels,
            base_channels=base_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            use_attention=use_attention,
        )
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.weight_decay = float(weight_decay)
        self.l1_weight = float(l1_weight)
        self.mse_weight = float(mse_weight)
        self.kl_weight = float(kl_weight)
        self.sample_posterior = bool(sample_posterior)
        self.export_path = None if export_path is None else str(export_path)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.autoencoder.to(memory_format=torch.channels_last)

    def prepare_images(self, images: Tensor) -> Tensor:
        """``images`` in the module's memory format (channels_last when ``channels_last``)."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # ------------------------------------------------------------- losses
    def compute_losses(self, images: Tensor, sample: bool | None = None) -> dict[str, Tensor]:
        """``{"rec", "kl", "loss", "reconstruction"}`` for a batch of images in [-1, 1]."""
        sample = self.sample_posterior if sample is None else sample
        images = self.prepare_images(images)
        mean, logvar = self.autoencoder.encode_distribution(images)
        # noise drawn in NCHW order (randn_like would follow channels_last): the same z in both formats
        noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device) if sample else None
        z = mean + noise * torch.exp(0.5 * logvar) if sample else mean
        recon = self.autoencoder.decode_unclamped(z)
        rec = images.new_zeros(())
        if self.l1_weight:
            rec = rec + self.l1_weight * F.l1_loss(recon, images)
        if self.mse_weight:
            rec = rec + self.mse_weight * F.mse_loss(recon, images)
        kl = diagonal_gaussian_kl(mean, logvar).mean()
        loss = rec + self.kl_weight * kl
        return {"rec": rec, "kl": kl, "loss": loss, "reconstruction": recon}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = _images(batch)
        out = self.compute_losses(images)
        bs = images.shape[0]
        self.log("train/rec", out["rec"], prog_bar=True, batch_size=bs)
        self.log("train/kl", out["kl"], batch_size=bs)
        self.log("train/loss", out["loss"], batch_size=bs)
        return out["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images = _images(batch)
        out = self.compute_losses(images, sample=False)
        bs = images.shape[0]
        self.log("val/rec", out["rec"], batch_size=bs, sync_dist=True)
        self.log("val/kl", out["kl"], batch_size=bs, sync_dist=True)
        self.log(
            "val/psnr",
            psnr(out["reconstruction"].clamp(-1, 1), images).mean(),
            prog_bar=True,
            batch_size=bs,
            sync_dist=True,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.autoencoder.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay
        )

    # ------------------------------------------------------------- export
    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write the autoencoder file (config, weights, latent stats if set), weights contiguous (NCHW)."""
        if not self.channels_last or self.autoencoder.encoder[0].weight.is_contiguous():
            return save_autoencoder(self.autoencoder, path)
        self.autoencoder.to(memory_format=torch.contiguous_format)
        try:
            return save_autoencoder(self.autoencoder, path)
        finally:
            self.autoencoder.to(memory_format=torch.channels_last)

    def on_train_end(self) -> None:
        # back to NCHW after training: the module then computes exactly what its exported file does
        self.autoencoder.to(memory_format=torch.contiguous_format)
        if self.export_path is not None and (self._trainer is None or self.trainer.is_global_zero):
            self.export(self.export_path)


def autoencoder_cache_path(ae_cfg: Any, dataset: Any, cache_dir: str | Path) -> Path:
    """Where a trainable autoencoder with this config, trained on this dataset, is kept."""
    cfg = to_plain(ae_cfg)
    payload = json.dumps(
        {
            "name": cfg["name"],
            "config": cfg.get("config", {}),
            "training": cfg.get("training", {}),
            "data": dataset.fingerprint(),
        },
        sort_keys=True,
    )
    key = hashlib.sha1(payload.encode()).hexdigest()[:12]
    return Path(cache_dir) / "autoencoders" / f"{cfg['name']}-{key}.pt"


def train_autoencoder(
    ae_cfg: Any,
    dataset: Any,
    *,
    export_path: str | Path,
    output_dir: str | Path,
    trainer_overrides: dict | None = None,
    loggers: list | None = None,
    val_fraction: float = 0.02,
    num_workers: int = 0,
    seed: int = 0,
) -> Path:
    """Train a KL autoencoder on ``dataset`` and write its frozen file to ``export_path``."""
    cfg = to_plain(ae_cfg)
    if cfg["name"] != "kl":
        raise ValueError(f"only the 'kl' autoencoder is trainable here, got autoencoder.name={cfg['name']!r}")
    training = dict(cfg.get("training", {}))
    batch_size = int(training.pop("batch_size", 64))
    max_steps = int(training.pop("max_steps", 1500))
    L.seed_everything(seed, workers=True)
    module = AutoencoderModule(**cfg.get("config", {}), **training, export_path=str(export_path))
    datamodule = ImageDataModule(
        dataset, batch_size=batch_size, num_workers=num_workers, val_fraction=val_fraction, seed=seed
    )
    trainer_kwargs = {
        "max_steps": max_steps,
        "max_epochs": -1,
        "accelerator": "auto",
        "devices": 1,
        "precision": resolve_precision("auto"),
        "default_root_dir": str(output_dir),
        "val_check_interval": min(500, max_steps),
        "check_val_every_n_epoch": None,
        "limit_val_batches": 4,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
        "enable_checkpointing": False,
        "logger": loggers if loggers else False,
        "callbacks": [ProgressBar(refresh_rate=20)],  # plain lines in a log file
    }
    trainer_kwargs.update(trainer_overrides or {})
    start = time.time()
    L.Trainer(**trainer_kwargs).fit(module, datamodule=datamodule)
    if not Path(export_path).exists():
        module.export(export_path)
    log.info("autoencoder trained in %.1fs -> %s", time.time() - start, export_path)
    return Path(export_path)


def ensure_autoencoder(
    ae_cfg: Any, dataset: Any, *, cache_dir: str | Path, output_dir: str | Path
) -> tuple[Autoencoder, dict]:
    """The frozen autoencoder of ``ae_cfg``, training it first when it is trainable and missing.

    Returns ``(autoencoder, spec)`` where ``spec`` rebuilds it with ``load_autoencoder(**spec)``
    (it is what flow checkpoints record instead of the weights).
    """
    cfg = to_plain(ae_cfg)
    name = cfg["name"]
    if name != "kl":
        spec = {k: v for k, v in cfg.items() if k not in _TRAINING_KEYS}
        return load_autoencoder(dict(spec)), spec
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        ckpt_path = autoencoder_cache_path(cfg, dataset, cache_dir)
    ckpt_path = Path(ckpt_path)
    rank, world_size = distributed_rank()
    if not ckpt_path.exists() and rank > 0 and cfg.get("train_if_missing", False):
        # under torchrun / srun only rank 0 trains the autoencoder; the others wait for its file
        log.info("rank %d/%d: waiting for rank 0 to train the autoencoder %s", rank, world_size, ckpt_path)
        wait_until(
            ckpt_path.exists,
            lambda: f"rank {rank}: rank 0 did not write the autoencoder {ckpt_path} in time",
            timeout=DEFAULT_WAIT_TIMEOUT,
            poll=2.0,
            progress=lambda: None,
        )
    if not ckpt_path.exists():
        if not cfg.get("train_if_missing", False):
            raise FileNotFoundError(
                f"autoencoder.ckpt_path={ckpt_path} does not exist; train one with "
                "`python -m latent_flow.train_autoencoder` or set autoencoder.train_if_missing=true"
            )
        log.info("no cached autoencoder at %s: training it first (stage 1 of 2)", ckpt_path)
        train_autoencoder(cfg, dataset, export_path=ckpt_path, output_dir=Path(output_dir) / "autoencoder")
    spec = {"name": "kl", "ckpt_path": str(ckpt_path.resolve())}
    return load_autoencoder(dict(spec)), spec
