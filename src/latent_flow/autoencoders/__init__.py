"""Autoencoders: the map between images in [-1, 1] and the latents a flow is trained on.

* :class:`Autoencoder` - the interface (normalised ``encode`` / ``decode``,
  latent statistics, frozen eval mode, ``fingerprint`` for the latent cache).
* :class:`IdentityAutoencoder` - pixel space (optionally space-to-depth).
* :class:`KLAutoencoder` - the framework's own small trainable KL autoencoder,
  trained by :class:`latent_flow.training.autoencoder.AutoencoderModule`.
* :func:`build_autoencoder` (fresh, from ``{"name": ..., **options}``) and
  :func:`load_autoencoder` (frozen, weights from ``ckpt_path``).
"""

from .base import (
    AUTOENCODER_FORMAT_VERSION,
    Autoencoder,
    autoencoder_names,
    build_autoencoder,
    load_autoencoder,
    load_autoencoder_checkpoint,
    measure_latent_stats,
    register_autoencoder,
    save_autoencoder,
)
from .diffusers_kl import DiffusersKLAutoencoder
from .identity import IdentityAutoencoder
from .kl import KLAutoencoder, diagonal_gaussian_kl, load_kl_autoencoder
from .taesd import DiffusersTinyAutoencoder, TinyAutoencoder

__all__ = [
    "AUTOENCODER_FORMAT_VERSION",
    "Autoencoder",
    "DiffusersKLAutoencoder",
    "DiffusersTinyAutoencoder",
    "TinyAutoencoder",
    "IdentityAutoencoder",
    "KLAutoencoder",
    "autoencoder_names",
    "build_autoencoder",
    "diagonal_gaussian_kl",
    "load_autoencoder",
    "load_autoencoder_checkpoint",
    "load_kl_autoencoder",
    "measure_latent_stats",
    "register_autoencoder",
    "save_autoencoder",
]
