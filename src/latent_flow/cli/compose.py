"""Command-line hooks: ``python -m latent_flow.sample ... classifier_ckpt_path=... compose="..."``.

``latent_flow.sample`` calls :func:`composed_generator` when ``compose`` is set (with a
label-conditional model, ``label=null`` means the null class, ``label=K`` adds label K and
``cfg_scale`` to the composition); the returned
callable has :func:`latent_flow.api.generate`'s signature, and its :meth:`ComposedGenerator.summary`
goes into ``summary.json`` (expression, guidance settings, classifier-gradient evaluations).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from latent_flow.compositional.energy import DEFAULT_NOT_CAP
from latent_flow.compositional.expression import parse, to_string, validate
from latent_flow.compositional.sampling import generate_composed, load_classifier_for
from latent_flow.utils.config import to_plain

__all__ = ["ComposedGenerator", "composed_generator", "guidance_options"]


def guidance_options(cfg: DictConfig) -> dict[str, float]:
    """``guidance_scale`` and the ``energy_guidance`` node (max_weight, t_min, t_max, not_cap) as keyword arguments."""
    g = to_plain(cfg.get("energy_guidance") or {})
    known = {"max_weight", "t_min", "t_max", "not_cap"}
    unknown = sorted(set(g) - known)
    if unknown:
        raise ValueError(f"unknown guidance option(s) {unknown}; valid: {sorted(known)}")
    return {
        "guidance_scale": float(cfg.get("guidance_scale", 1.0)),
        "max_weight": float(g.get("max_weight", 10.0)),
        "t_min": float(g.get("t_min", 0.0)),
        "t_max": float(g.get("t_max", 1.0)),
        "not_cap": float(g.get("not_cap", DEFAULT_NOT_CAP)),
    }


class ComposedGenerator:
    """``generate``-compatible callable that samples guided by one expression; counts the costs."""

    def __init__(
        self,
        model,
        classifier,
        expression: str,
        options: dict[str, float],
        classifier_path: str,
        null_labels: bool = False,
    ) -> None:
        node = parse(expression)
        validate(node, classifier.attribute_values, continuous=classifier.continuous, text=expression)
        self.model = model
        self.classifier = classifier
        self.expression = expression
        self.parsed = to_string(node)
        self.options = options
        self.classifier_path = classifier_path
        self.null_labels = null_labels  # label-conditional model without label=...: the null class
        self.grad_evals = 0
        self.model_calls = 0
        self.batches = 0

    def __call__(
        self,
        model,
        *,
        num_samples: int,
        sampler: str,
        labels=None,
        cfg_scale: float = 1.0,
        seed: int = 0,
        first_index: int = 0,
        use_ema: bool = True,
        **sampler_options,
    ):
        if self.null_labels:
            labels = None
        images, result = generate_composed(
            model,
            self.classifier,
            self.expression,
            num_samples=num_samples,
            sampler=sampler,
            labels=labels,
            cfg_scale=cfg_scale,
            seed=seed,
            first_index=first_index,
            use_ema=use_ema,
            **self.options,
            **sampler_options,
        )
        self.grad_evals += result.grad_evals
        self.model_calls += result.model_calls
        self.batches += 1
        return images, result

    def summary(self) -> dict[str, Any]:
        per = max(self.batches, 1)
        return {
            "compose": self.expression,
            "compose_parsed": self.parsed,
            "classifier_ckpt_path": self.classifier_path,
            "compose_labels": "null class" if self.null_labels else "as given",
            **self.options,
            "classifier_grad_evals_per_sample": self.grad_evals / per,
            "model_calls_per_sample": self.model_calls / per,
        }


def composed_generator(cfg: DictConfig, model) -> ComposedGenerator:
    """The sampling hook for ``compose=...`` (needs ``classifier_ckpt_path``)."""
    path = cfg.get("classifier_ckpt_path")
    if not path:
        raise ValueError(
            "compose=... needs classifier_ckpt_path=<classifier.pt written by latent_flow.train_classifier>"
        )
    classifier, _ = load_classifier_for(model, path)
    # a label-conditional model with label=null samples its unconditional (null-class) velocity under
    # composition, instead of cycling over the classes; label=K combines label K (and cfg_scale) with it
    null_labels = bool(model.condition.uses_label and cfg.get("label") is None)
    return ComposedGenerator(model, classifier, str(cfg.compose), guidance_options(cfg), str(path), null_labels)
