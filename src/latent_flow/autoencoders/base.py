"""The autoencoder interface shared by every latent space of the framework.

A flow model never sees pixels: it is trained on *normalised latents*
``encode(images) = (encode_raw(images) - latent_mean) / latent_std`` and its
samples are turned back into images with ``decode``. Everything about an
autoencoder that the rest of the framework needs lives on this class:

* images at the interface are always float tensors ``(B, 3, H, W)`` in
  **[-1, 1]**. An implementation whose network works in another range (TAESD /
  TAEF2 use [0, 1]) maps to and from that range inside ``encode_raw`` /
  ``decode_raw``; callers never see it.
* ``latent_channels`` and ``downsample_factor`` give the latent shape
  (``latent_shape(resolution)``); nothing else hard-codes them.
* ``latent_mean`` / ``latent_std`` are per-channel buffers of shape ``(C,)``,
  measured from raw latents (``measure_latent_stats``) and set with
  ``set_latent_stats``. They are persistent buffers, so they travel in the
  autoencoder's own checkpoint. Until they are set they are 0 / 1 (identity
  normalisation) and ``has_latent_stats`` is False.
* ``fingerprint()`` identifies the *raw* latent space (class, config, weights;
  not the latent statistics, which are measured from the raw latents of a
  cache and therefore cannot be part of that cache's key).
* Frozen autoencoders (``freeze()``, what ``load_autoencoder`` returns) have
  ``requires_grad=False`` on every parameter and stay in eval mode whatever
  ``train(mode)`` is called with: Lightning calls ``.train()`` on the whole
  LightningModule at the start of fitting and after every validation loop,
  and ``nn.Module.train`` recurses into children, so without the override an
  autoencoder held by the flow module would silently switch to training mode.

The time convention of the framework (t = 0 noise, t = 1 data) does not
appear here: autoencoders only map between images and latents.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from latent_flow.utils.checkpoint_files import load_checkpoint, save_checkpoint_file
from latent_flow.utils.config import check_options, to_plain
from latent_flow.utils.hashing import update_with_state_dict

__all__ = [
    "AUTOENCODER_FORMAT_VERSION",
    "Autoencoder",
    "autoencoder_names",
    "build_autoencoder",
    "load_autoencoder",
    "load_autoencoder_checkpoint",
    "measure_latent_stats",
    "register_autoencoder",
    "weights_fingerprint",
    "save_autoencoder",
]

#: Version of the file format written by :func:`save_autoencoder`.
AUTOENCODER_FORMAT_VERSION = 1

_STAT_BUFFERS = ("latent_mean", "latent_std", "latent_stats_set")

_TRAIN_HINT = "python -m latent_flow.train_autoencoder"


class Autoencoder(nn.Module, ABC):
    """Base class: a (usually frozen) map between images in [-1, 1] and latents.

    Subclasses implement :meth:`encode_raw`, :meth:`decode_raw` and
    :meth:`config`, and call ``super().__init__(latent_channels, downsample_factor)``.

    Args:
        latent_channels: number of latent channels ``C``.
        downsample_factor: spatial reduction ``f``; an image ``(3, H, W)``
            becomes a latent ``(C, H / f, W / f)``. ``H`` and ``W`` must be
            divisible by ``f``.
        image_channels: channels of the images at the interface (3, RGB).
    """

    latent_mean: Tensor
    latent_std: Tensor
    latent_stats_set: Tensor

    def __init__(self, latent_channels: int, downsample_factor: int, image_channels: int = 3) -> None:
        super().__init__()
        if int(latent_channels) < 1:
            raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
        if int(downsample_factor) < 1:
            raise ValueError(f"downsample_factor must be >= 1, got {downsample_factor}")
        self._latent_channels = int(latent_channels)
        self._downsample_factor = int(downsample_factor)
        self._image_channels = int(image_channels)
        self._frozen = False
        # Persistent: saved with the autoencoder's own checkpoint.
        self.register_buffer("latent_mean", torch.zeros(self._latent_channels))
        self.register_buffer("latent_std", torch.ones(self._latent_channels))
        self.register_buffer("latent_stats_set", torch.tensor(False))

    # ------------------------------------------------------------------ shape
    @property
    def latent_channels(self) -> int:
        """Number of latent channels ``C``."""
        return self._latent_channels

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction factor ``f`` (image side / latent side)."""
        return self._downsample_factor

    @property
    def image_channels(self) -> int:
        """Channels of the images at the interface (3)."""
        return self._image_channels

    def latent_shape(self, resolution: int | tuple[int, int]) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of the latent of one image of ``resolution``
        (an int for square images or ``(H, W)``)."""
        if isinstance(resolution, int):
            height, width = resolution, resolution
        else:
            height, width = (int(s) for s in resolution)
        self._check_spatial(height, width)
        f = self._downsample_factor
        return (self._latent_channels, height // f, width // f)

    def _check_spatial(self, height: int, width: int) -> None:
        f = self._downsample_factor
        if height % f != 0 or width % f != 0 or height < f or width < f:
            raise ValueError(
                f"{type(self).__name__}: image size {height}x{width} (HxW) is not divisible by the "
                f"autoencoder's downsample factor {f}; use a resolution that is a multiple of {f}"
            )

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"{type(self).__name__}.encode expects a Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != self._image_channels:
            raise ValueError(
                f"{type(self).__name__}.encode expects images of shape (B, {self._image_channels}, H, W) "
                f"in [-1, 1], got shape {tuple(images.shape)}"
            )
        self._check_spatial(int(images.shape[2]), int(images.shape[3]))

    def _check_latents(self, latents: Tensor) -> None:
        if not isinstance(latents, Tensor):
            raise TypeError(f"{type(self).__name__}.decode expects a Tensor, got {type(latents).__name__}")
        if latents.ndim != 4 or latents.shape[1] != self._latent_channels:
            raise ValueError(
                f"{type(self).__name__}.decode expects latents of shape (B, {self._latent_channels}, h, w), "
                f"got shape {tuple(latents.shape)}"
            )

    # -------------------------------------------------------- to implement
    @abstractmethod
    def encode_raw(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> raw (unnormalised) latents
        ``(B, C, H/f, W/f)``. Deterministic (posterior mean for a KL AE)."""

    @abstractmethod
    def decode_raw(self, raw_latents: Tensor) -> Tensor:
        """Raw latents ``(B, C, h, w)`` -> images ``(B, 3, h*f, w*f)`` in [-1, 1]."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain Python types) that rebuild this
        architecture: ``type(self)(**self.config())``."""

    # ---------------------------------------------------------- normalised
    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, self._latent_channels, 1, 1)
        mean = self.latent_mean.to(device=like.device, dtype=like.dtype).view(shape)
        std = self.latent_std.to(device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def _encode(self, images: Tensor) -> Tensor:
        self._check_images(images)
        raw = self.encode_raw(images)
        mean, std = self._stats(raw)
        return (raw - mean) / std

    def _decode(self, latents: Tensor) -> Tensor:
        self._check_latents(latents)
        mean, std = self._stats(latents)
        return self.decode_raw(latents * std + mean)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> normalised latents
        ``(raw - latent_mean) / latent_std`` of shape ``(B, C, H/f, W/f)``.

        Runs without autograd; see :meth:`encode_with_grad`.
        Raises ValueError for a wrong channel count or a size not divisible by
        ``downsample_factor``.
        """
        return self._encode(images)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents ``(B, C, h, w)`` -> images in [-1, 1]:
        ``decode_raw(latents * latent_std + latent_mean)``. Runs without
        autograd; see :meth:`decode_with_grad`."""
        return self._decode(latents)

    def encode_with_grad(self, images: Tensor) -> Tensor:
        """:meth:`encode` without disabling autograd."""
        return self._encode(images)

    def decode_with_grad(self, latents: Tensor) -> Tensor:
        """:meth:`decode` without disabling autograd, for guidance through the
        decoder (e.g. a loss on decoded images back-propagated to the latents).
        A frozen autoencoder's parameters still receive no gradients."""
        return self._decode(latents)

    def reconstruct(self, images: Tensor) -> Tensor:
        """``decode_raw(encode_raw(images))`` (autograd left as the caller set it)."""
        self._check_images(images)
        return self.decode_raw(self.encode_raw(images))

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`reconstruct`."""
        return self.reconstruct(images)

    # --------------------------------------------------------- latent stats
    @property
    def has_latent_stats(self) -> bool:
        """True once :meth:`set_latent_stats` was called (or loaded)."""
        return bool(self.latent_stats_set.item())

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-channel normalisation of :meth:`encode` / :meth:`decode`.

        Args:
            mean: ``(C,)`` per-channel mean of the raw latents.
            std: ``(C,)`` per-channel standard deviation, every entry > 0.

        Raises:
            ValueError: wrong shape, non-finite values, or std <= 0.
        """
        c = self._latent_channels
        mean_t = torch.as_tensor(mean).detach()
        std_t = torch.as_tensor(std).detach()
        for name, value in (("mean", mean_t), ("std", std_t)):
            if tuple(value.shape) != (c,):
                raise ValueError(
                    f"set_latent_stats: {name} must have shape ({c},) (one value per latent channel), "
                    f"got {tuple(value.shape)}"
                )
            if not bool(torch.isfinite(value.double()).all()):
                raise ValueError(f"set_latent_stats: {name} must be finite, got {value.tolist()}")
        if not bool((std_t > 0).all()):
            raise ValueError(
                f"set_latent_stats: std must be > 0 in every channel, got {std_t.tolist()} "
                "(a channel with zero variance cannot be normalised)"
            )
        with torch.no_grad():
            self.latent_mean.copy_(mean_t.to(self.latent_mean))
            self.latent_std.copy_(std_t.to(self.latent_std))
            self.latent_stats_set.fill_(True)

    # -------------------------------------------------------------- frozen
    @property
    def is_frozen(self) -> bool:
        return self._frozen

    def freeze(self: _AE) -> _AE:
        """``requires_grad=False`` on every parameter and eval mode for good
        (:meth:`train` will not switch it back). Returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def unfreeze(self: _AE) -> _AE:
        """Undo :meth:`freeze` (for training the autoencoder itself)."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = False
        return self

    def train(self: _AE, mode: bool = True) -> _AE:
        """``nn.Module.train`` except that a frozen autoencoder stays in eval
        mode whatever ``mode`` is: Lightning calls ``.train()`` on the module
        that holds it, and that call recurses into here."""
        return super().train(False if self._frozen else mode)

    # --------------------------------------------------------- fingerprint
    def fingerprint(self) -> str:
        """SHA-1 hex digest over the class name, :meth:`config` and the bytes of
        every parameter and non-statistics buffer (name, dtype, shape, data).

        The latent statistics are deliberately left out: they are measured from
        the raw latents that this fingerprint keys. Device does not matter;
        dtype does (fp16 weights give different latents).
        """
        return weights_fingerprint(self, self.config())

    def extra_repr(self) -> str:
        return (
            f"latent_channels={self._latent_channels}, downsample_factor={self._downsample_factor}, "
            f"frozen={self._frozen}"
        )


_AE = TypeVar("_AE", bound=Autoencoder)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    return value


# ------------------------------------------------------------ latent stats
def weights_fingerprint(ae: Autoencoder, config: Mapping[str, Any]) -> str:
    """SHA-1 over the class, ``config`` (as JSON) and every parameter / buffer except the latent stats."""
    h = hashlib.sha1()
    h.update(f"{type(ae).__module__}.{type(ae).__qualname__}".encode())
    h.update(json.dumps(_jsonable(dict(config)), sort_keys=True).encode())
    update_with_state_dict(h, ae, skip=_STAT_BUFFERS)
    return h.hexdigest()


def measure_latent_stats(raw_latents: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation of raw latents.

    Args:
        raw_latents: a tensor ``(B, C, h, w)`` (or ``(C, h, w)``), or an
            iterable of such tensors (e.g. batches from a latent cache). All
            must have the same ``C``.

    Returns:
        ``(mean, std)``, float32 tensors of shape ``(C,)``, statistics over the
        batch and spatial dimensions.

    Accumulation is streaming and numerically stable: each batch is reduced to
    ``(count, mean, M2)`` in float64 and merged with Chan et al.'s parallel
    update, so a large channel offset does not cancel the variance.
    """
    chunks: Iterable[Tensor] = [raw_latents] if isinstance(raw_latents, Tensor) else raw_latents
    count = 0
    mean: Tensor | None = None
    m2: Tensor | None = None
    for chunk in chunks:
        if not isinstance(chunk, Tensor):
            raise TypeError(f"measure_latent_stats expects tensors, got {type(chunk).__name__}")
        x = chunk.detach()
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim < 2:
            raise ValueError(f"measure_latent_stats expects (B, C, ...) tensors, got shape {tuple(chunk.shape)}")
        c = x.shape[1]
        x = x.transpose(0, 1).reshape(c, -1).to(torch.float64)
        n_b = x.shape[1]
        if n_b == 0:
            continue
        mean_b = x.mean(dim=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(dim=1)
        if mean is None or m2 is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        if c != mean.shape[0]:
            raise ValueError(f"measure_latent_stats: channel count changed from {mean.shape[0]} to {c}")
        mean_b = mean_b.to(mean.device)
        m2_b = m2_b.to(mean.device)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None or m2 is None or count == 0:
        raise ValueError("measure_latent_stats: no latents given (empty input)")
    std = torch.sqrt(m2 / count)
    return mean.to(torch.float32).cpu(), std.to(torch.float32).cpu()


# ---------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Autoencoder]] = {}


def register_autoencoder(name: str) -> Callable[[type[_AE]], type[_AE]]:
    """Class decorator: make an Autoencoder subclass buildable by ``name``."""

    def decorator(cls: type[_AE]) -> type[_AE]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"autoencoder name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def autoencoder_names() -> list[str]:
    """Names accepted by :func:`build_autoencoder` / :func:`load_autoencoder`."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[Autoencoder]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown autoencoder {name!r}; known: {autoencoder_names()}")
    return _REGISTRY[name]


def _construct(cls: type[_AE], options: Mapping[str, Any]) -> _AE:
    check_options(cls, options, cls.__name__)
    return cls(**options)


def build_autoencoder(cfg: Mapping[str, Any]) -> Autoencoder:
    """Build a fresh (not frozen, randomly initialised where it has weights)
    autoencoder from ``{"name": <registered name>, **constructor options}``.

    Unknown names or options raise ValueError.
    """
    cfg = to_plain(cfg)
    if "name" not in cfg:
        raise ValueError(f"autoencoder config needs a 'name' (one of {autoencoder_names()}), got keys {sorted(cfg)}")
    options = {k: v for k, v in cfg.items() if k != "name"}
    return _construct(_lookup(str(cfg["name"])), options)


def load_autoencoder(
    cfg_or_name: str | Mapping[str, Any],
    ckpt_path: str | os.PathLike[str] | None = None,
    *,
    allow_random_weights: bool = False,
    **options: Any,
) -> Autoencoder:
    """A frozen autoencoder ready for encoding / decoding.

    Either ``load_autoencoder("kl", ckpt_path="ae.pt")`` or
    ``load_autoencoder({"name": "kl", "ckpt_path": "ae.pt", ...})``.

    Args:
        cfg_or_name: registered name or a config mapping with ``name`` and
            optionally ``ckpt_path`` / ``allow_random_weights``.
        ckpt_path: a file written by :func:`save_autoencoder`. Options given
            next to it must agree with the checkpoint's config.
        allow_random_weights: build an autoencoder that needs trained weights
            (``requires_checkpoint``) without a checkpoint (tests only).
        **options: constructor options.

    Raises:
        ValueError: unknown name/option, config mismatch, or a trained
            autoencoder requested without ``ckpt_path``.
        FileNotFoundError: ``ckpt_path`` does not exist.
    """
    if isinstance(cfg_or_name, Mapping):
        cfg = to_plain(cfg_or_name)
        if options:
            cfg.update(options)
        if "name" not in cfg:
            raise ValueError(f"autoencoder config needs a 'name' (one of {autoencoder_names()})")
        name = str(cfg.pop("name"))
        if ckpt_path is None:
            ckpt_path = cfg.pop("ckpt_path", None)
        else:
            cfg.pop("ckpt_path", None)
        allow_random_weights = bool(cfg.pop("allow_random_weights", allow_random_weights))
        options = cfg
    else:
        name = str(cfg_or_name)
    cls = _lookup(name)
    if ckpt_path is not None:
        ae = load_autoencoder_checkpoint(ckpt_path, expected_class=cls, **options)
    else:
        if getattr(cls, "requires_checkpoint", False) and not allow_random_weights:
            raise ValueError(
                f"autoencoder {name!r} needs trained weights: pass ckpt_path=<file written by "
                f"save_autoencoder> (train one with `{_TRAIN_HINT}`)"
            )
        ae = _construct(cls, options)
    return ae.freeze()


# ------------------------------------------------------------- checkpoints
def save_autoencoder(ae: Autoencoder, path: str | os.PathLike[str]) -> Path:
    """Write ``{"format_version", "class", "config", "state_dict", "fingerprint"}``
    to ``path`` (parent folders created) atomically, with its SHA-256 beside it
    (:func:`latent_flow.utils.checkpoint_files.save_checkpoint_file`). The state dict includes the latent
    statistics. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": AUTOENCODER_FORMAT_VERSION,
        "class": type(ae).__name__,
        "name": getattr(type(ae), "registry_name", None),
        "config": _jsonable(ae.config()),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in ae.state_dict().items()},
        "fingerprint": ae.fingerprint(),
    }
    save_checkpoint_file(payload, path)
    return path


def _normalise(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(_normalise(v) for v in value)
    return value


def load_autoencoder_checkpoint(
    path: str | os.PathLike[str],
    expected_class: type[_AE] | None = None,
    **options: Any,
) -> _AE:
    """Load a file written by :func:`save_autoencoder` (not frozen).

    Args:
        path: the file.
        expected_class: raise ValueError if the file holds another class.
        **options: constructor options the caller expects; any that differ
            from the checkpoint's config raise ValueError.

    Raises:
        FileNotFoundError: missing file (the message names it and how to make one).
        ValueError: not an autoencoder file, unknown format version, class or
            config mismatch, or weights that do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"autoencoder checkpoint not found: {str(path)!r}. Train one with `{_TRAIN_HINT}` "
            "(it writes the file with save_autoencoder), or point ckpt_path at an existing file."
        )
    # checksum (files written since checkpoints carry one), readable, finite weights: CheckpointIntegrityError
    payload = load_checkpoint(path, weights_only=True)
    if not isinstance(payload, dict) or not {"class", "config", "state_dict", "format_version"} <= set(payload):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{str(path)!r} is not an autoencoder file written by save_autoencoder "
            f"(expected keys class/config/state_dict/format_version, got {keys}). "
            "A Lightning checkpoint of AutoencoderModule can be converted with "
            "AutoencoderModule.load_from_checkpoint(path).export(out_path)."
        )
    version = payload["format_version"]
    if version != AUTOENCODER_FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r}: autoencoder file format_version {version} is not supported "
            f"(this version reads {AUTOENCODER_FORMAT_VERSION})"
        )
    class_name = str(payload["class"])
    classes = {c.__name__: c for c in _REGISTRY.values()}
    if expected_class is not None:
        if class_name != expected_class.__name__:
            raise ValueError(f"{str(path)!r} holds a {class_name}, not a {expected_class.__name__}")
        cls: type[Autoencoder] = expected_class
    elif class_name in classes:
        cls = classes[class_name]
    else:
        raise ValueError(f"{str(path)!r} holds an unknown autoencoder class {class_name!r}; known: {sorted(classes)}")

    config = dict(payload["config"])
    options = to_plain(options)
    mismatched = {
        k: (v, config[k]) for k, v in options.items() if k in config and _normalise(v) != _normalise(config[k])
    }
    unknown = sorted(k for k in options if k not in config)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for the {class_name} in {str(path)!r}; its config has {sorted(config)}"
        )
    if mismatched:
        details = ", ".join(f"{k}: requested {a!r} but checkpoint has {b!r}" for k, (a, b) in mismatched.items())
        raise ValueError(f"autoencoder config does not match checkpoint {str(path)!r}: {details}")
    try:
        ae = _construct(cls, config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r}: cannot rebuild {class_name} from config {config}: {exc}") from exc
    try:
        ae.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{str(path)!r}: weights do not fit {class_name}({config}): {exc}") from exc
    return ae  # type: ignore[return-value]
