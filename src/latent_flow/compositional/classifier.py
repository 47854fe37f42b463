"""Time-conditioned latent attribute classifiers ``p(attribute | x_t, t)`` (one head per attribute).

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**; ``x_t`` is a point of the
flow model's own affine path ``x_t = alpha_t x_data + sigma_t x_noise`` on *normalised* latents
(the flow checkpoint's latent statistics).

Network: a small residual conv trunk on ``x_t`` (C, h, w) whose blocks are modulated by a
sinusoidal time embedding (:class:`~latent_flow.backbones.embeddings.TimestepEmbedder`), global
average pooling, and one linear head per attribute. SiLU activations keep ``grad_x`` smooth for
guidance.

Heads and energies (``E = -log p``, the quantity the composition in
:mod:`latent_flow.compositional.energy` works on):

- **discrete** attribute with K values: logits (B, K); ``E(a = k) = -log_softmax(logits)[k]``.
- **continuous** attribute: a scalar prediction ``f(x_t, t)`` (B,); Gaussian energy
  ``E(a = c) = (f - c)^2 / (2 sigma^2)`` with the head's fixed ``sigma`` (LACE uses ~0.1).
  Trained by mean squared error (the maximum-likelihood fit of ``f`` for a fixed sigma).

A checkpoint (:meth:`LatentAttributeClassifier.save`) holds the architecture, the weights and
``meta``: the flow checkpoint it was trained for, its path scheduler, latent shape and statistics,
the held-out combinations and the training data name.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_flow.backbones.embeddings import TimestepEmbedder
from latent_flow.utils.checkpoint_files import load_checkpoint, save_checkpoint_file

__all__ = ["CLASSIFIER_FORMAT_VERSION", "AttributeSpec", "LatentAttributeClassifier", "load_classifier"]

CLASSIFIER_FORMAT_VERSION = 1


@dataclass
class AttributeSpec:
    """One classifier head.

    Args:
        name: attribute name (e.g. ``"color"``).
        kind: ``"discrete"`` (softmax over ``values``) or ``"continuous"`` (Gaussian energy).
        values: value names of a discrete attribute; for a continuous one, optional names whose
            numeric value is their index (e.g. ``count``: ``["1", "2", "3"]`` -> 0, 1, 2).
        sigma: standard deviation of the Gaussian energy (continuous only).
    """

    name: str
    kind: str = "discrete"
    values: list[str] = field(default_factory=list)
    sigma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"attribute {self.name!r}: kind must be 'discrete' or 'continuous', got {self.kind!r}")
        self.values = [str(v) for v in self.values]
        if self.kind == "discrete" and len(self.values) < 2:
            raise ValueError(f"discrete attribute {self.name!r} needs at least 2 values, got {self.values}")
        if self.kind == "continuous" and not self.sigma > 0:
            raise ValueError(f"continuous attribute {self.name!r} needs sigma > 0, got {self.sigma}")

    @property
    def out_features(self) -> int:
        return len(self.values) if self.kind == "discrete" else 1

    def value_index(self, value: str) -> int:
        if value not in self.values:
            raise ValueError(
                f"unknown value {value!r} for attribute {self.name!r}; valid values: {', '.join(self.values)}"
            )
        return self.values.index(value)

    def target(self, value: str) -> float:
        """Numeric target of a continuous attribute: a listed name -> its index, else ``float(value)``."""
        if value in self.values:
            return float(self.values.index(value))
        try:
            return float(value)
        except ValueError:
            named = f" or one of {', '.join(self.values)}" if self.values else ""
            raise ValueError(f"continuous attribute {self.name!r} needs a number{named}, got {value!r}") from None


class _TimeResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * channels)
        self.norm2 = nn.GroupNorm(min(8, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return x + h


class LatentAttributeClassifier(nn.Module):
    """``p(attribute | x_t, t)`` for every attribute in ``attributes`` (t = 0 noise, t = 1 data).

    Args:
        latent_shape: ``(C, h, w)`` of the flow's latents.
        attributes: head specs (:class:`AttributeSpec` or dicts).
        width: channels of the trunk.
        depth: residual blocks per resolution (two resolutions: full and half size).
        time_dim: width of the time embedding.
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int] | list[int],
        attributes: list[AttributeSpec | dict],
        *,
        width: int = 32,
        depth: int = 1,
        time_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(latent_shape) != 3:
            raise ValueError(f"latent_shape must be (C, h, w), got {latent_shape}")
        self.latent_shape = tuple(int(v) for v in latent_shape)
        specs = [a if isinstance(a, AttributeSpec) else AttributeSpec(**a) for a in attributes]
        if not specs:
            raise ValueError("a classifier needs at least one attribute")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate attribute names: {names}")
        self.specs: dict[str, AttributeSpec] = {s.name: s for s in specs}
        self.arch = {"width": int(width), "depth": int(depth), "time_dim": int(time_dim)}
        channels = self.latent_shape[0]
        self.time_embed = TimestepEmbedder(time_dim)
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks_hi = nn.ModuleList([_TimeResBlock(width, time_dim) for _ in range(depth)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.blocks_lo = nn.ModuleList([_TimeResBlock(2 * width, time_dim) for _ in range(depth)])
        self.out_norm = nn.GroupNorm(min(8, 2 * width), 2 * width)
        self.heads = nn.ModuleDict({s.name: nn.Linear(2 * width, s.out_features) for s in specs})

    @property
    def attribute_names(self) -> list[str]:
        return list(self.specs)

    @property
    def attribute_values(self) -> dict[str, list[str]]:
        return {n: list(s.values) for n, s in self.specs.items()}

    @property
    def continuous(self) -> list[str]:
        return [n for n, s in self.specs.items() if s.kind == "continuous"]

    def forward(self, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Head outputs: logits (B, K) for discrete attributes, predictions (B,) for continuous ones."""
        if x_t.shape[1:] != self.latent_shape:
            raise ValueError(
                f"x_t has shape {tuple(x_t.shape)}, the classifier expects (B, {', '.join(map(str, self.latent_shape))})"
            )
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        emb = self.time_embed(t.to(x_t.dtype))
        h = self.stem(x_t)
        for block in self.blocks_hi:
            h = block(h, emb)
        h = self.down(F.silu(h))
        for block in self.blocks_lo:
            h = block(h, emb)
        feats = F.silu(self.out_norm(h)).mean(dim=(2, 3))
        out = {}
        for name, head in self.heads.items():
            y = head(feats)
            out[name] = y if self.specs[name].kind == "discrete" else y[:, 0]
        return out

    # ------------------------------------------------------------------ energies
    def term_energy(self, outputs: dict[str, Tensor], attribute: str, value: str) -> Tensor:
        """``E(attribute = value | x_t, t) = -log p`` (B,) from :meth:`forward`'s outputs."""
        if attribute not in self.specs:
            raise ValueError(f"unknown attribute {attribute!r}; valid attributes: {', '.join(self.specs)}")
        spec = self.specs[attribute]
        out = outputs[attribute]
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # at least float32 (float64 stays)
        if spec.kind == "discrete":
            return -F.log_softmax(out, dim=-1)[:, spec.value_index(value)]
        c = spec.target(value)
        return (out - c).square() / (2.0 * spec.sigma**2)

    def loss(self, outputs: dict[str, Tensor], targets: Tensor, names: list[str]) -> tuple[Tensor, dict[str, float]]:
        """Training loss: cross-entropy (discrete) / squared error / 2 (continuous), summed over heads.

        ``targets`` (B, A) in the order of ``names`` (value indices; continuous targets are the
        index as a number). Returns the loss and per-head values.
        """
        total = torch.zeros((), device=targets.device)
        parts: dict[str, float] = {}
        for name in self.specs:
            column = targets[:, names.index(name)]
            if self.specs[name].kind == "discrete":
                part = F.cross_entropy(outputs[name].float(), column.long())
            else:
                part = 0.5 * F.mse_loss(outputs[name].float(), column.float())
            total = total + part
            parts[name] = float(part.detach())
        return total, parts

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Predicted value index (discrete, argmax) or value (continuous) per attribute."""
        out = self(x_t, t)
        return {n: (o.argmax(-1) if self.specs[n].kind == "discrete" else o) for n, o in out.items()}

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        return {
            "latent_shape": list(self.latent_shape),
            "attributes": [asdict(s) for s in self.specs.values()],
            **self.arch,
        }

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": CLASSIFIER_FORMAT_VERSION,
            "kind": "latent_flow.compositional.LatentAttributeClassifier",
            "config": self.config(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "meta": meta or {},
        }
        save_checkpoint_file(payload, path)  # atomic, with its checksum beside it
        return path

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LatentAttributeClassifier:
        cfg = dict(config)
        return cls(cfg.pop("latent_shape"), cfg.pop("attributes"), **cfg)


def load_classifier(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[LatentAttributeClassifier, dict]:
    """Load a classifier written by ``latent_flow.train_classifier``: ``(classifier in eval mode, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier_ckpt_path={path} does not exist (expected classifier.pt written by latent_flow.train_classifier)"
        )
    payload = load_checkpoint(path)  # checksum, readable, finite weights (CheckpointIntegrityError)
    if not isinstance(payload, dict) or payload.get("kind") != "latent_flow.compositional.LatentAttributeClassifier":
        raise ValueError(
            f"{path} is not a latent attribute classifier checkpoint (written by latent_flow.train_classifier)"
        )
    if payload.get("format_version") != CLASSIFIER_FORMAT_VERSION:
        raise ValueError(
            f"{path} has classifier format {payload.get('format_version')}, this code reads {CLASSIFIER_FORMAT_VERSION}"
        )
    clf = LatentAttributeClassifier.from_config(payload["config"])
    clf.load_state_dict(payload["state_dict"])
    clf.to(device).eval()
    return clf, dict(payload.get("meta", {}))
