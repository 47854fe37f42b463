"""Pretrained diffusers KL autoencoders (Stable Diffusion / SDXL / FLUX.1 VAEs).

``DiffusersKLAutoencoder`` (registered as ``"diffusers_kl"``) wraps a diffusers
``AutoencoderKL`` loaded with ``from_pretrained``, either from a Hugging Face Hub
id (``stabilityai/sd-vae-ft-mse``) or from a local directory (the layout written
by ``save_pretrained`` / ``hf download --local-dir``: ``config.json`` +
``diffusion_pytorch_model.safetensors``, optionally under ``subfolder``).

Raw latents are the *posterior mean* of the encoder, shifted and scaled with the
published constants of the model, ``z = (mean - shift_factor) * scaling_factor``
(SD 1.x/2.x: scale 0.18215, no shift; SDXL: 0.13025; FLUX.1: 0.3611 / 0.1159).
When ``scaling_factor`` / ``shift_factor`` are not given, the values in the
model's ``config.json`` are used. The per-channel statistics that the latent
cache measures from data are applied *after* these constants (see ``base.py``).

Network behaviour (``load_diffusers_model``, shared with ``diffusers_tiny``):

* ``pretrained`` is an existing directory -> loaded from it, never touching the
  network (``local_files_only=True``).
* ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` -> only the local Hugging
  Face cache is tried; a miss raises :class:`PretrainedWeightsNotFoundError` at
  once, with the command that downloads the weights and the option that takes
  a local path (``autoencoder.pretrained=/path/to/dir``).
* otherwise the Hub is tried with short timeouts (a few seconds) and any
  connection error becomes the same clear error.

diffusers is imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import Autoencoder, register_autoencoder, weights_fingerprint

__all__ = [
    "DiffusersKLAutoencoder",
    "PretrainedWeightsNotFoundError",
    "load_diffusers_model",
]

#: seconds for Hub metadata / download requests when a hub id is resolved online
HUB_TIMEOUT_S = 5

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

#: Hub repositories that need an accepted licence + a token (``hf auth login``)
_GATED_PREFIXES = ("black-forest-labs/",)


class PretrainedWeightsNotFoundError(OSError):
    """Pretrained weights are neither a local directory nor in the local
    Hugging Face cache, and the Hub cannot be reached (offline)."""


def parse_dtype(dtype: str) -> torch.dtype:
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return _DTYPES[key]


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline_requested(local_files_only: bool | None) -> bool:
    if local_files_only:
        return True
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:  # the constant is read once at import: honour it too
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - huggingface_hub is a diffusers dependency
        return False


@contextlib.contextmanager
def _short_hub_timeouts(seconds: int = HUB_TIMEOUT_S) -> Iterator[None]:
    """Short Hub timeouts (env vars and huggingface_hub's already-read constants), restored after."""
    names = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")
    old_env = {n: os.environ.get(n) for n in names}
    old_const: dict[str, Any] = {}
    try:
        from huggingface_hub import constants
    except Exception:  # noqa: BLE001
        constants = None  # type: ignore[assignment]
    try:
        for n in names:
            if old_env[n] is None:
                os.environ[n] = str(seconds)
            if constants is not None and hasattr(constants, n):
                old_const[n] = getattr(constants, n)
                setattr(constants, n, min(int(old_const[n] or seconds), seconds))
        yield
    finally:
        for n, v in old_env.items():
            if v is None:
                os.environ.pop(n, None)
        if constants is not None:
            for n, v in old_const.items():
                setattr(constants, n, v)


def _download_hint(kind: str, pretrained: str, subfolder: str | None) -> str:
    local = f"/path/to/{pretrained.rstrip('/').split('/')[-1]}"
    include = f" --include '{subfolder}/*'" if subfolder else ""
    sub = f" (keep autoencoder.subfolder={subfolder}: the weights sit in {local}/{subfolder})" if subfolder else ""
    gated = ""
    if pretrained.startswith(_GATED_PREFIXES):
        gated = (
            f"\n{pretrained} is a gated repository: accept its licence on https://huggingface.co/{pretrained} "
            "and log in (`hf auth login`) before downloading."
        )
    return (
        f"could not load the pretrained diffusers {kind} {pretrained!r}"
        + (f" (subfolder {subfolder!r})" if subfolder else "")
        + ": it is not a local directory, not in the local Hugging Face cache, and the Hub cannot be "
        "reached (no network, or offline mode: HF_HUB_OFFLINE=1 / local_files_only=True).\n"
        "Download it on a machine with network access:\n"
        f"  huggingface-cli download {pretrained}{include} --local-dir {local}\n"
        f"  (huggingface_hub >= 1.0: hf download {pretrained}{include} --local-dir {local})\n"
        f"then copy the folder here and pass it with autoencoder.pretrained={local}{sub}. "
        "Alternatively fill the Hugging Face cache (HF_HOME) and set HF_HUB_OFFLINE=1." + gated
    )


def load_diffusers_model(
    model_cls: Any,
    pretrained: str,
    *,
    subfolder: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
    kind: str | None = None,
) -> nn.Module:
    """``model_cls.from_pretrained(pretrained, ...)`` without ever hanging offline.

    Args:
        model_cls: a diffusers model class (``AutoencoderKL``, ``AutoencoderTiny``).
        pretrained: an existing local directory or a Hub id.
        subfolder: folder inside the directory / repository (``"vae"``).
        torch_dtype: dtype of the loaded weights.
        local_files_only: True: never use the network; None/False: use it unless
            ``HF_HUB_OFFLINE=1``.
        kind: name used in error messages (default: the class name).

    Raises:
        PretrainedWeightsNotFoundError: a hub id that is not cached while offline
            / unreachable (the message says what to download and which option
            takes a local path).
        FileNotFoundError: ``pretrained`` looks like a path (absolute, ``./``,
            ``~``) but does not exist.
        ValueError: a local directory that does not hold such a model.
    """
    with warnings.catch_warnings():
        # diffusers passes a deprecated argument to huggingface_hub on every Hub lookup
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        return _load_diffusers_model(model_cls, pretrained, subfolder, torch_dtype, local_files_only, kind)


def _load_diffusers_model(
    model_cls: Any,
    pretrained: str,
    subfolder: str | None,
    torch_dtype: torch.dtype,
    local_files_only: bool | None,
    kind: str | None,
) -> nn.Module:
    kind = kind or getattr(model_cls, "__name__", "model")
    pretrained = str(pretrained)
    path = Path(os.path.expanduser(pretrained))
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # diffusers would warn at every load otherwise
    if subfolder:
        kwargs["subfolder"] = subfolder

    if path.is_dir():
        try:
            return model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            where = path / subfolder if subfolder else path
            raise ValueError(
                f"{str(where)!r} does not hold a diffusers {kind} (expected config.json and "
                f"diffusion_pytorch_model.safetensors written by save_pretrained / hf download"
                + (f", under the subfolder {subfolder!r}" if subfolder else "")
                + f"): {exc}"
            ) from exc

    looks_like_path = pretrained.startswith(("/", "./", "../", "~", "."))
    if looks_like_path or pretrained.count("/") > 1 or os.sep == "\\" and "\\" in pretrained:
        raise FileNotFoundError(
            f"pretrained {kind} directory not found: {pretrained!r}. Pass an existing directory "
            "(written by save_pretrained or `hf download <repo> --local-dir <dir>`) or a Hub id such as "
            "'stabilityai/sd-vae-ft-mse' with autoencoder.pretrained=..."
        )

    if _offline_requested(local_files_only):
        try:
            return model_cls.from_pretrained(pretrained, local_files_only=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any miss becomes the clear message
            raise PretrainedWeightsNotFoundError(
                _download_hint(kind, pretrained, subfolder) + f"\n(underlying error: {type(exc).__name__}: {exc})"
            ) from exc

    if not _hub_reachable():
        # huggingface_hub retries connection errors with back-off (~20 s): never start that
        try:
            return model_cls.from_pretrained(pretrained, local_files_only=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any miss becomes the clear message
            raise PretrainedWeightsNotFoundError(
                _download_hint(kind, pretrained, subfolder)
                + f"\n(the Hub at {_hub_endpoint()} could not be reached: a HEAD request failed or took over "
                f"{HUB_TIMEOUT_S} s; underlying error: {type(exc).__name__}: {exc})"
            ) from exc

    with _short_hub_timeouts():
        try:
            return model_cls.from_pretrained(pretrained, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            if _is_connection_error(exc):
                raise PretrainedWeightsNotFoundError(
                    _download_hint(kind, pretrained, subfolder) + f"\n(underlying error: {type(exc).__name__}: {exc})"
                ) from exc
            raise


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # noqa: BLE001
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """One HEAD request to the Hub endpoint (through huggingface_hub's session,
    so proxies apply), no retries: False on any error or timeout."""
    url = _hub_endpoint()
    try:
        from huggingface_hub.utils import get_session

        get_session().head(url, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - unreachable for whatever reason
        pass
    try:  # older huggingface_hub without a usable session
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)  # noqa: S310
        return True
    except Exception:  # noqa: BLE001
        return False


def _is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause chain) is a network / cache-miss error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    markers = (
        "connect",
        "resolve",
        "timed out",
        "timeout",
        "offline",
        "network",
        "name or service",
        "cannot find the requested files",
        "couldn't connect",
        "localentrynotfound",
    )
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__.lower()
        if isinstance(e, (ConnectionError, TimeoutError)) or any(
            k in name for k in ("connect", "timeout", "localentrynotfound", "offline")
        ):
            return True
        if isinstance(e, OSError) and any(m in str(e).lower() for m in markers):
            return True
        e = e.__cause__ or e.__context__
    return False


def _block_factor(model: nn.Module, key: str) -> int:
    channels = getattr(model.config, key)
    return 2 ** (len(channels) - 1)


@register_autoencoder("diffusers_kl")
class DiffusersKLAutoencoder(Autoencoder):
    """A pretrained diffusers ``AutoencoderKL`` (SD / SDXL / FLUX.1 VAE), frozen.

    Args:
        pretrained: Hub id (``stabilityai/sd-vae-ft-mse``) or a local directory.
        subfolder: folder of the VAE inside the repository / directory
            (``"vae"`` for full pipelines such as FLUX.1-dev).
        scaling_factor: published latent scale; None: the model config's.
        shift_factor: published latent shift; None: the model config's (0 when absent).
        dtype: ``float32`` / ``float16`` / ``bfloat16`` weights.
        local_files_only: never use the network (also implied by ``HF_HUB_OFFLINE=1``).
    """

    def __init__(
        self,
        pretrained: str,
        subfolder: str | None = None,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        dtype: str = "float32",
        local_files_only: bool | None = None,
    ) -> None:
        from diffusers import AutoencoderKL

        torch_dtype = parse_dtype(dtype)
        vae = load_diffusers_model(
            AutoencoderKL,
            pretrained,
            subfolder=subfolder,
            torch_dtype=torch_dtype,
            local_files_only=local_files_only,
            kind="AutoencoderKL",
        )
        cfg = vae.config
        super().__init__(int(cfg.latent_channels), _block_factor(vae, "block_out_channels"), int(cfg.in_channels))
        self.vae = vae
        self._pretrained = str(pretrained)
        self._subfolder = subfolder
        self._scaling_arg = scaling_factor
        self._shift_arg = shift_factor
        self._dtype_name = str(dtype)
        self._local_files_only = local_files_only
        cfg_scale = getattr(cfg, "scaling_factor", None)
        cfg_shift = getattr(cfg, "shift_factor", None)
        if scaling_factor is None:
            scaling_factor = cfg_scale if cfg_scale is not None else 1.0
        if shift_factor is None:
            shift_factor = cfg_shift if cfg_shift is not None else 0.0
        #: the published constants in use: raw latent = (posterior mean - shift) * scale
        self.scale = float(scaling_factor)
        self.shift = float(shift_factor)
        self.torch_dtype = torch_dtype

    def encode_raw(self, images: Tensor) -> Tensor:
        out_dtype = images.dtype if images.is_floating_point() else torch.float32
        x = images.to(self.torch_dtype)
        mean = self.vae.encode(x).latent_dist.mean
        return ((mean.to(out_dtype) - self.shift) * self.scale).to(out_dtype)

    def decode_raw(self, raw_latents: Tensor) -> Tensor:
        out_dtype = raw_latents.dtype if raw_latents.is_floating_point() else torch.float32
        z = raw_latents.to(torch.float32) / self.scale + self.shift
        images = self.vae.decode(z.to(self.torch_dtype)).sample
        return images.to(out_dtype).clamp(-1.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {
            "pretrained": self._pretrained,
            "subfolder": self._subfolder,
            "scaling_factor": self._scaling_arg,
            "shift_factor": self._shift_arg,
            "dtype": self._dtype_name,
            "local_files_only": self._local_files_only,
        }

    def fingerprint(self) -> str:
        """Class, effective scale / shift, dtype and weights; not the path the weights came from."""
        return weights_fingerprint(
            self, {"scaling_factor": self.scale, "shift_factor": self.shift, "dtype": str(self.torch_dtype)}
        )
