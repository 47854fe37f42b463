"""Train the framework's own KL autoencoder: ``python -m latent_flow.train_autoencoder``.

Reconstruction (L1 + MSE) + KL loss, configured by Hydra like everything else
(``conf/train_autoencoder.yaml``: ``data=...``, ``autoencoder=...``, ``trainer.*``).
The frozen autoencoder file is written to ``export_path``; when that is null, to
the cache location that ``latent_flow.train`` looks up for this autoencoder config
and dataset, so a later flow training finds it without any option.

``ensure_autoencoder`` is the automatic first stage of ``latent_flow.train``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from latent_flow.autoencoders import load_autoencoder
from latent_flow.autoencoders.base import Autoencoder
from latent_flow.runtime import CONFIG_DIR, resolve_precision

__all__ = ["ensure_autoencoder", "autoencoder_cache_path", "train_autoencoder", "main"]

log = logging.getLogger(__name__)

#: autoencoder config keys that configure training, not the model
_TRAINING_KEYS = {"training", "train_if_missing", "ckpt_path"}


def _container(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def autoencoder_cache_path(ae_cfg: Any, dataset: Any, cache_dir: str | Path) -> Path:
    """Where a trainable autoencoder with this config, trained on this dataset, is kept."""
    cfg = _container(ae_cfg)
    payload = json.dumps(
        {"name": cfg["name"], "config": cfg.get("config", {}), "training": cfg.get("training", {}),
         "data": dataset.fingerprint()},
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
    from latent_flow.autoencoders.lightning_module import AutoencoderModule
    from latent_flow.data.datamodule import ImageDataModule

    cfg = _container(ae_cfg)
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
        "callbacks": [TQDMProgressBar(refresh_rate=20)],
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
    cfg = _container(ae_cfg)
    name = cfg["name"]
    if name != "kl":
        spec = {k: v for k, v in cfg.items() if k not in _TRAINING_KEYS}
        return load_autoencoder(dict(spec)), spec
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        ckpt_path = autoencoder_cache_path(cfg, dataset, cache_dir)
    ckpt_path = Path(ckpt_path)
    from latent_flow.encode import DEFAULT_WAIT_TIMEOUT, _wait, distributed_rank

    rank, world_size = distributed_rank()
    if not ckpt_path.exists() and rank > 0 and cfg.get("train_if_missing", False):
        # under torchrun / srun only rank 0 trains the autoencoder; the others wait for its file
        log.info("rank %d/%d: waiting for rank 0 to train the autoencoder %s", rank, world_size, ckpt_path)
        _wait(
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_autoencoder")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from latent_flow.runtime import instantiate_loggers, save_resolved_config

    save_resolved_config(cfg, cfg.paths.output_dir)
    dataset = instantiate(cfg.data.dataset)
    export_path = cfg.export_path or autoencoder_cache_path(cfg.autoencoder, dataset, cfg.paths.cache_dir)
    trainer_overrides = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_overrides.pop("_target_", None)
    trainer_overrides["precision"] = resolve_precision(trainer_overrides.get("precision", "auto"))
    path = train_autoencoder(
        cfg.autoencoder,
        dataset,
        export_path=export_path,
        output_dir=cfg.paths.output_dir,
        trainer_overrides=trainer_overrides,
        loggers=instantiate_loggers(cfg.get("logger")),
        val_fraction=cfg.data.val_fraction,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
    )
    print(f"autoencoder written to {path}")


if __name__ == "__main__":
    main()
