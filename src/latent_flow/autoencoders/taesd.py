"""The TAESD family of tiny pretrained autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2).

Tiny distilled approximations (Ollin Boer Bohan, MIT licence) of the SD / SDXL /
SD3 / FLUX.1 / FLUX.2 VAE latent spaces: ~1.2-1.4M parameters per half, 8x
spatial reduction, 4 / 16 / 32 latent channels.

* :class:`TinyAutoencoder` (``"taesd"``) - our own ``nn.Sequential``
  implementation of the layout, loading the original ``.pth`` state dicts
  (``taesd_encoder.pth`` / ``taesd_decoder.pth`` ...) from
  https://github.com/madebyollin/taesd (repository files / releases). The
  ``"gn"`` variant adds the GroupNorm pre-mixers of TAEF2 (FLUX.2 latents, 32
  channels), which diffusers does not implement.
* :class:`DiffusersTinyAutoencoder` (``"diffusers_tiny"``) - diffusers'
  ``AutoencoderTiny`` (plain variant only) from a Hub id (``madebyollin/taesd``)
  or a ``save_pretrained`` directory, with the offline behaviour of
  ``diffusers_kl``.

The networks work on images in [0, 1]; both classes map from / to [-1, 1] at the
interface. Raw latents are the networks' own (unnormalised) latents; the latent
cache measures their per-channel statistics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .base import Autoencoder, register_autoencoder, weights_fingerprint
from .diffusers_kl import load_diffusers_model, parse_dtype

__all__ = ["Block", "Clamp", "DiffusersTinyAutoencoder", "TinyAutoencoder", "tiny_decoder", "tiny_encoder"]

_WEIGHTS_HINT = (
    "TAESD-family weights (taesd_*.pth, taesdxl_*.pth, taesd3_*.pth, taef1_*.pth, taef2_*.pth) come from "
    "https://github.com/madebyollin/taesd (repository files / releases): download the encoder and decoder "
    ".pth files and pass their paths with autoencoder.encoder_path=... autoencoder.decoder_path=..."
)

_WIDTH = 64


def _conv(n_in: int, n_out: int, **kwargs: Any) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): ``tanh(x / 3) * 3``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """``ReLU(conv(x) + x)`` with three 3x3 convs; with ``gn`` a pre-mixer
    ``x = x + pool(x)`` (1x1 conv -> GroupNorm(4) -> ReLU -> 1x1 conv) runs first."""

    def __init__(self, channels: int = _WIDTH, gn: bool = False) -> None:
        super().__init__()
        if gn:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, channels * 4, 1, bias=False),
                nn.GroupNorm(4, channels * 4),
                nn.ReLU(),
                nn.Conv2d(channels * 4, channels, 1, bias=False),
            )
        else:
            self.pool = None
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def tiny_encoder(latent_channels: int, gn: bool = False) -> nn.Sequential:
    """Images in [0, 1] ``(B, 3, H, W)`` -> latents ``(B, C, H/8, W/8)``."""
    c = _WIDTH
    return nn.Sequential(
        _conv(3, c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c, gn), Block(c, gn), Block(c, gn),
        _conv(c, latent_channels),
    )  # fmt: skip


def tiny_decoder(latent_channels: int, gn: bool = False) -> nn.Sequential:
    """Latents ``(B, C, h, w)`` -> images in roughly [0, 1] ``(B, 3, 8h, 8w)``."""
    c = _WIDTH
    return nn.Sequential(
        Clamp(), _conv(latent_channels, c), nn.ReLU(),
        Block(c, gn), Block(c, gn), Block(c, gn), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), _conv(c, 3),
    )  # fmt: skip


def _load_state_dict(path: Path, which: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"TAESD {which} weights not found: {str(path)!r}. {_WEIGHTS_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"could not read TAESD {which} weights {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} is not a TAESD {which} state_dict (a dict of tensors). {_WEIGHTS_HINT}")
    return {str(k): v.to(torch.float32) for k, v in state.items()}


def _fit_state_dict(module: nn.Module, state: dict[str, Tensor], path: Path, which: str, describe: str) -> None:
    """``module.load_state_dict(state)`` with an error that names the file and the first mismatch."""
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ValueError(
                f"TAESD {which} weights {str(path)!r} do not fit {describe}: missing key {key!r} "
                f"(expected shape {tuple(value.shape)}); check latent_channels and variant"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"TAESD {which} weights {str(path)!r} do not fit {describe}: key {key!r} expected shape "
                f"{tuple(value.shape)}, got {tuple(state[key].shape)}; check latent_channels and variant"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        hint = " (GroupNorm pre-mixers: use variant='gn')" if any(".pool." in k for k in extra) else ""
        raise ValueError(
            f"TAESD {which} weights {str(path)!r} do not fit {describe}: unexpected key {extra[0]!r}{hint}"
            f" ({len(extra)} unexpected in all); check latent_channels and variant"
        )
    module.load_state_dict(state, strict=True)


@register_autoencoder("taesd")
class TinyAutoencoder(Autoencoder):
    """A TAESD-family tiny autoencoder from its encoder / decoder ``.pth`` files.

    Args:
        encoder_path: ``*_encoder.pth`` (a flat ``nn.Sequential`` state dict).
        decoder_path: ``*_decoder.pth``.
        latent_channels: 4 (TAESD, TAESDXL), 16 (TAESD3, TAEF1), 32 (TAEF2).
        variant: ``"plain"`` (TAESD .. TAEF1) or ``"gn"`` (TAEF2: GroupNorm
            pre-mixers in the lowest-resolution blocks).
        encoder_path / decoder_path None builds random weights (tests only).

    Raises:
        FileNotFoundError: a missing weight file (the message says where TAESD
            weights come from).
        ValueError: a state dict that does not fit (file, first mismatching
            key, expected vs got shape).
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike[str] | None,
        decoder_path: str | os.PathLike[str] | None,
        latent_channels: int,
        variant: Literal["plain", "gn"] = "plain",
    ) -> None:
        if variant not in ("plain", "gn"):
            raise ValueError(f"TAESD variant must be 'plain' or 'gn', got {variant!r}")
        super().__init__(int(latent_channels), 8)
        gn = variant == "gn"
        self.variant = variant
        self._encoder_path = None if encoder_path is None else str(encoder_path)
        self._decoder_path = None if decoder_path is None else str(decoder_path)
        self.encoder = tiny_encoder(self.latent_channels, gn)
        self.decoder = tiny_decoder(self.latent_channels, gn)
        describe = f"TinyAutoencoder(latent_channels={self.latent_channels}, variant={variant!r})"
        for which, path, module in (
            ("encoder", self._encoder_path, self.encoder),
            ("decoder", self._decoder_path, self.decoder),
        ):
            if path is not None:
                p = Path(os.path.expanduser(path))
                _fit_state_dict(module, _load_state_dict(p, which), p, which, describe)

    def encode_raw(self, images: Tensor) -> Tensor:
        x = images.to(self.encoder[0].weight.dtype)
        return self.encoder(x.add(1).mul(0.5)).to(images.dtype)

    def decode_raw(self, raw_latents: Tensor) -> Tensor:
        z = raw_latents.to(self.decoder[1].weight.dtype)
        return self.decoder(z).clamp(0, 1).mul(2).sub(1).to(raw_latents.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "encoder_path": self._encoder_path,
            "decoder_path": self._decoder_path,
            "latent_channels": self.latent_channels,
            "variant": self.variant,
        }

    def fingerprint(self) -> str:
        """Class, latent channels, variant and weights; not where the files are."""
        return weights_fingerprint(self, {"latent_channels": self.latent_channels, "variant": self.variant})

    def export_state_dicts(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(encoder, decoder) state dicts in the original ``.pth`` layout."""
        enc = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        dec = {k: v.detach().cpu().clone() for k, v in self.decoder.state_dict().items()}
        return enc, dec


@register_autoencoder("diffusers_tiny")
class DiffusersTinyAutoencoder(Autoencoder):
    """diffusers ``AutoencoderTiny`` (plain TAESD variant) from a Hub id
    (``madebyollin/taesd``, ``madebyollin/taef1``) or a local directory.

    Raw latents are ``AutoencoderTiny.encode(...).latents`` (the unscaled
    TAESD latents; the model's ``scaling_factor`` is 1). Offline behaviour as
    ``diffusers_kl``: a local directory never touches the network; a Hub id
    that is not cached fails at once with the download command.
    """

    def __init__(
        self,
        pretrained: str,
        subfolder: str | None = None,
        dtype: str = "float32",
        local_files_only: bool | None = None,
    ) -> None:
        from diffusers import AutoencoderTiny

        torch_dtype = parse_dtype(dtype)
        model = load_diffusers_model(
            AutoencoderTiny,
            pretrained,
            subfolder=subfolder,
            torch_dtype=torch_dtype,
            local_files_only=local_files_only,
            kind="AutoencoderTiny",
        )
        cfg = model.config
        factor = 2 ** (len(cfg.encoder_block_out_channels) - 1)
        super().__init__(int(cfg.latent_channels), factor, int(cfg.in_channels))
        self.taesd = model
        self._pretrained = str(pretrained)
        self._subfolder = subfolder
        self._dtype_name = str(dtype)
        self._local_files_only = local_files_only
        self.torch_dtype = torch_dtype

    def encode_raw(self, images: Tensor) -> Tensor:
        # diffusers' EncoderTiny maps [-1, 1] -> [0, 1] itself
        return self.taesd.encode(images.to(self.torch_dtype)).latents.to(images.dtype)

    def decode_raw(self, raw_latents: Tensor) -> Tensor:
        # DecoderTiny soft-clamps the latents and maps its output to [-1, 1] itself
        out = self.taesd.decode(raw_latents.to(self.torch_dtype)).sample
        return out.clamp(-1, 1).to(raw_latents.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "pretrained": self._pretrained,
            "subfolder": self._subfolder,
            "dtype": self._dtype_name,
            "local_files_only": self._local_files_only,
        }

    def fingerprint(self) -> str:
        """Class, dtype and weights; not where they were loaded from."""
        return weights_fingerprint(self, {"dtype": str(self.torch_dtype)})
