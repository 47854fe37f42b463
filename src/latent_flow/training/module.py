"""The LightningModule of latent flow matching.

Time convention (everywhere in latent_flow): ``t = 0`` is noise, ``t = 1`` is data.
A training batch holds *latents* (read from the latent cache, never encoded here):

    x_data = batch["latent"]            # normalised autoencoder latents (B, C, h, w)
    x_noise ~ N(0, I);  t ~ time sampler
    x_t, u_t = path.sample(x_noise, x_data, t)
    loss = || backbone(concat(x_t, spatial cond), t, label) - u_t ||^2

Sampling integrates ``dx/dt = v(x, t)`` from noise (t=0) to data (t=1) with the EMA
weights and decodes with the frozen autoencoder, which is *not* a submodule: its
weights never enter flow checkpoints (it is rebuilt from ``hparams.autoencoder``).

``objective={"name": "meanflow", ...}`` trains a *flow map* instead (:mod:`latent_flow.flow.meanflow`):
the backbone also takes the landing time ``t_end`` and learns the average velocity over
``[t, t_end]``; ``sampler=flowmap`` samples it in one or a few evaluations, the ODE solvers sample
its instantaneous velocity (``t_end = t``). :meth:`LatentFlowModule.initialise_from` converts a
trained flow checkpoint into a flow-map model (``python -m latent_flow.train init_from=...``); with
``objective.velocity=teacher`` that flow, frozen, is distilled (its velocity in MeanFlow's target, or with
``objective.target=ode`` its guided ODE integrated over each pair as the regression target); with
``objective.dmd_weight > 0`` the student's few-step samples are also matched to the teacher's distribution (DMD,
:mod:`latent_flow.flow.distribution_matching`) through a "fake" flow trained on them in the same step, and with
``objective.gan_weight > 0`` told from the batch's real latents by a discriminator head on the fake flow's features
(DMD2's adversarial term, :mod:`latent_flow.backbones.discriminator`).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from latent_flow.autoencoders import load_autoencoder
from latent_flow.backbones import build_backbone
from latent_flow.backbones.discriminator import FeatureDiscriminatorHead
from latent_flow.conditioning import build_condition
from latent_flow.flow.coupling import check_coupling, couple
from latent_flow.flow.distribution_matching import discriminator_loss, distribution_matching_loss, generator_loss
from latent_flow.flow.meanflow import MeanFlowObjective
from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import build_scheduler
from latent_flow.flow.time_sampling import build_time_sampler
from latent_flow.sampling.flowmap import FlowMapSolver, GuidedFlowMap
from latent_flow.sampling.guidance import autoguidance, classifier_free_guidance
from latent_flow.sampling.noise import noise_for_indices
from latent_flow.sampling.solvers import Solver
from latent_flow.training.ema import EMA
from latent_flow.training.lr_schedule import check_schedule, warmup_cosine_factor
from latent_flow.training.resume import ResumableRNG
from latent_flow.utils.config import to_plain

__all__ = ["LatentFlowModule", "BackboneMismatchError", "OBJECTIVES"]

#: training objectives (``objective.name``): flow matching, and the MeanFlow flow map
OBJECTIVES = ("flow", "meanflow")
#: options of ``objective=meanflow`` (conf/objective/meanflow.yaml; :class:`MeanFlowObjective`)
_MEANFLOW_OPTIONS = {
    "distinct_fraction",
    "time_sampler",
    "weight_power",
    "weight_eps",
    "cfg_scale",
    "cfg_kappa",
    "velocity",
    "target",
    "teacher_steps",
    "grid_fraction",
    "grid_steps",
    "grid_shift",
    "dmd_weight",
    "dmd_times",
    "dmd_steps",
    "dmd_fake_lr_scale",
    "gan_weight",
    "gan_discriminator_weight",
    "gan_times",
    "shortcut_velocity_below",
    "shortcut_ode_from",
    "ode_start",
}


class BackboneMismatchError(RuntimeError):
    """A checkpoint was written by a different backbone / latent shape than the config asks for."""


def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class LatentFlowModule(ResumableRNG, L.LightningModule):
    """Conditional flow matching on autoencoder latents.

    Args:
        backbone: ``{"name": "DiT-T/2", **preset overrides}``; input size, channels and
            classes are derived from ``latent_shape``, ``condition`` and ``num_classes``.
        condition: ``{"name": "label" | "none" | "inpaint" | "semantic", "label_dropout": p, ...}``
            (``conf/condition/``). ``condition=label``: labels dropped in the backbone with ``p``;
            spatial + label: the condition drops the label with the spatial part (joint null with
            probability ``cond_dropout``) and alone with ``p`` among the rest, the backbone not at all.
        path: ``{"scheduler": {"name": "condot", ...}, "time_sampler": {"name": "uniform", ...},
            "coupling": "independent" | "ot"}`` (``ot``: minibatch OT pairs within each label,
            :mod:`latent_flow.flow.coupling`).
        optim: AdamW and schedule settings (lr, weight_decay, betas, eps, warmup_steps,
            cosine, min_lr_ratio, fused).
        ema: ``{"decay": 0.9999, "warmup": True}`` or ``None`` to disable (not recommended).
        latent_shape: ``(C, h, w)`` of the normalised latents.
        num_classes: number of class labels of the dataset (0 = none).
        latent_stats: ``{"mean": [...], "std": [...]}`` measured on the data (stored for decoding).
        autoencoder: the autoencoder config used to decode samples (rebuilt on demand).
        compile: ``torch.compile`` the backbone for training and sampling.
        data: ``{"name", "resolution"}`` of the training data (informational; the evaluator uses it).
        objective: ``{"name": "flow"}`` (default: flow matching) or ``{"name": "meanflow",
            "distinct_fraction", "time_sampler", "weight_power", "weight_eps", "cfg_scale", "cfg_kappa"}``
            (``conf/objective/``): a flow map, :mod:`latent_flow.flow.meanflow`. Its backbone is built with
            ``flow_map=True`` and without label dropout of its own (the objective drops labels, with the
            condition's ``label_dropout``, because the guidance folded into its target must know which
            rows lost theirs); ``time_sampler: null`` draws the pairs' times from ``path.time_sampler``.
        seed: the run's base seed (``cfg.seed``). Model initialisation uses the global seed set
            by ``L.seed_everything`` and is identical on every rank (DDP broadcasts rank 0's
            weights anyway). At ``on_train_start`` torch's RNGs (CPU and all CUDA devices),
            which draw the training noise ``x_noise`` and times ``t``, are reseeded with
            ``seed + global_rank``, so DDP ranks draw *different* noise and times instead of
            identical (correlated) ones. Validation uses its own fixed generators.

    Exact resume: every checkpoint holds each rank's RNG states (``checkpoint["rng_states"]``,
    :mod:`latent_flow.training.resume`); a run resumed with ``ckpt_path=`` restores its rank's
    entry at ``on_train_start`` instead of reseeding, and the datamodule restores the data order
    and position, so the resumed run continues bit for bit.

    Distributed runs: at ``on_train_end`` with ``world_size > 1`` a float64 checksum of the
    backbone and EMA parameters is all-gathered; rank 0 writes ``<default_root_dir>/ddp_sync.json``
    (per-rank seeds, first-batch noise checksums and parameter checksums) and every rank raises
    ``RuntimeError`` if the ranks' parameters differ.
    """

    def __init__(
        self,
        *,
        backbone: dict,
        condition: dict,
        path: dict,
        optim: dict,
        ema: dict | None,
        latent_shape: Sequence[int],
        num_classes: int = 0,
        latent_stats: dict | None = None,
        autoencoder: dict | None = None,
        compile: bool = False,
        seed: int = 0,
        data: dict | None = None,
        objective: dict | None = None,
    ) -> None:
        super().__init__()
        backbone, condition, path, optim, ema = map(to_plain, (backbone, condition, path, optim, ema))
        objective = dict(to_plain(objective) or {"name": "flow"})
        if objective.get("name") not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective.get('name')!r}; valid names: {list(OBJECTIVES)}")
        flow_map = objective["name"] == "meanflow"
        latent_shape = list(to_plain(latent_shape))
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "condition": condition,
                "path": path,
                "optim": optim,
                "ema": ema,
                "latent_shape": latent_shape,
                "num_classes": int(num_classes),
                "latent_stats": to_plain(latent_stats),
                "autoencoder": to_plain(autoencoder),
                "compile": bool(compile),
                "seed": int(seed),
                "data": to_plain(data),
                "objective": objective,
            }
        )
        cond_opts = dict(condition)
        cond_name = cond_opts.pop("name")
        label_dropout = float(cond_opts.pop("label_dropout", 0.0))
        if cond_name in ("inpaint", "semantic"):  # spatial (+ label): the condition drops the label jointly
            cond_opts["label_dropout"] = label_dropout
        self.condition = build_condition(
            cond_name, num_classes=int(num_classes), latent_shape=tuple(latent_shape), **cond_opts
        )
        # label dropout in the backbone only when the condition does not do it (condition=label)
        backbone_label_dropout = label_dropout if self.condition.uses_label and not self.condition.drops_labels else 0.0
        # a flow map drops condition=label's labels in its objective (it must know the dropped rows), not in the backbone
        self._objective_label_dropout = backbone_label_dropout if flow_map else 0.0
        if flow_map:
            backbone_label_dropout = 0.0
        channels, height, width = latent_shape
        if height != width:
            raise ValueError(f"latent_shape must be square for the current backbones, got {latent_shape}")
        bb_opts = dict(backbone)
        bb_name = bb_opts.pop("name")

        def make_backbone(label_dropout: float, with_interval: bool) -> torch.nn.Module:
            return build_backbone(
                bb_name,
                input_size=height,
                in_channels=channels + self.condition.spatial_channels,
                out_channels=channels,
                num_classes=int(num_classes) if self.condition.uses_label else 0,
                class_dropout_prob=label_dropout,
                **({"flow_map": True} if with_interval else {}),
                **bb_opts,
            )

        self.backbone = make_backbone(backbone_label_dropout, flow_map)
        self.ema = EMA(self.backbone, **ema) if ema else None
        # trainable condition encoders (condition=semantic) get their own EMA copy; parameter-free ones none
        has_cond_params = any(True for _ in self.condition.parameters())
        self.condition_ema = EMA(self.condition, **ema) if (ema and has_cond_params) else None

        sched_opts = dict(path["scheduler"])
        self.path = AffinePath(build_scheduler(sched_opts.pop("name"), **sched_opts))
        ts_opts = dict(path.get("time_sampler", {"name": "uniform"}))
        self.time_sampler = build_time_sampler(ts_opts.pop("name"), **ts_opts)
        self.coupling = check_coupling(
            str(path.get("coupling", "independent")), spatial_condition=bool(self.condition.spatial_channels)
        )
        self.objective: MeanFlowObjective | None = None
        if flow_map:
            mf_opts = {k: v for k, v in objective.items() if k != "name"}
            unknown = sorted(set(mf_opts) - _MEANFLOW_OPTIONS)
            if unknown:
                raise ValueError(f"objective=meanflow: unknown options {unknown}; valid: {sorted(_MEANFLOW_OPTIONS)}")
            pair_times = mf_opts.pop("time_sampler", None)
            if pair_times:
                pair_times = dict(pair_times)
                pair_sampler = build_time_sampler(pair_times.pop("name"), **pair_times)
            else:
                pair_sampler = self.time_sampler
            if float(mf_opts.get("cfg_scale", 1.0)) != 1.0 or float(mf_opts.get("cfg_kappa", 0.0)) != 0.0:
                if not (self.condition.uses_label or self.condition.spatial_channels):
                    raise ValueError(
                        "objective.cfg_scale != 1 (guidance folded into the target) needs a conditional model"
                    )
            self.objective = MeanFlowObjective(self.path, pair_sampler, **mf_opts)
        # distillation (objective.velocity=teacher): a frozen flow network (and condition encoder) of the
        # backbone's architecture without the interval embedding, filled by initialise_from (init_from=) and
        # kept in the checkpoints, so that a resumed run distils from the same teacher
        self.teacher: torch.nn.Module | None = None
        self.teacher_condition: torch.nn.Module | None = None
        if self.objective is not None and self.objective.distils:
            self.teacher = make_backbone(0.0, False).requires_grad_(False)
            if has_cond_params:
                self.teacher_condition = copy.deepcopy(self.condition).requires_grad_(False)
        # distribution matching (objective.dmd_weight > 0): a flow network of the teacher's architecture, trained
        # by flow matching on the student's own samples (DMD's "fake" score); it starts as the teacher
        # (initialise_from) and is kept in the checkpoints, so a resumed run goes on with it
        self.fake: torch.nn.Module | None = None
        if self.objective is not None and self.objective.matches_distribution:
            self.fake = make_backbone(0.0, False)
        # DMD2's adversarial term (objective.gan_weight > 0): a discriminator head on the fake flow's features
        self.discriminator: FeatureDiscriminatorHead | None = None
        if self.fake is not None and self.objective.adversarial:
            self.discriminator = FeatureDiscriminatorHead(self.fake.feature_channels)
        self._last_mse: Tensor | None = None

        self._autoencoder = None  # not a submodule: never saved in flow checkpoints
        self._compiled: dict[str, Any] = {}
        self._rank_seed: int | None = None
        self._first_noise_checksum: float | None = None

    # ------------------------------------------------------------------ networks
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.hparams.latent_shape)

    @property
    def num_classes(self) -> int:
        return int(self.hparams.num_classes)

    @property
    def is_flow_map(self) -> bool:
        """Whether this model is a flow map (``objective=meanflow``): its backbone takes ``t_end``."""
        return self.objective is not None

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.teacher, self.teacher_condition):  # the teacher is evaluated, never trained
            if frozen is not None:
                frozen.eval()
        return self

    def teacher_velocity(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """``v_T(x_t, t | cond)`` of the distillation teacher (``objective.velocity=teacher``), without gradient."""
        if self.teacher is None:
            raise ValueError("this model has no teacher: objective.velocity=teacher (with init_from=<flow ckpt>)")
        condition = self.teacher_condition if self.teacher_condition is not None else self.condition
        with torch.no_grad():
            x_in, label = condition.network_inputs(x_t, cond)
            return self.teacher(x_in, t, label)

    def _teacher_row_velocity(self, cond: dict[str, Tensor]):
        """``v(z, tau, rows)`` of the teacher for the batch rows ``rows`` of ``cond`` (``objective.target=ode``),
        guided with ``objective.cfg_scale`` by :func:`classifier_free_guidance` (one teacher call on ``[cond; null]``
        rows). A row whose condition was dropped is its own null: guidance leaves its unconditional velocity as is."""
        null = self.condition.null(cond)
        scale = self.objective.cfg_scale

        def velocity(z: Tensor, tau: Tensor, rows: Tensor) -> Tensor:
            rows_cond = {key: value[rows] for key, value in cond.items()}
            rows_null = {key: value[rows] for key, value in null.items()}
            return classifier_free_guidance(self.teacher_velocity, rows_cond, rows_null, scale)(z, tau)

        return velocity

    def _fake_velocity(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """``v_fake(x_t, t | cond)`` of distribution matching's fake flow (inputs through the teacher's condition)."""
        condition = self.teacher_condition if self.teacher_condition is not None else self.condition
        with torch.no_grad():
            x_in, label = condition.network_inputs(x_t, cond)
        return self.fake(x_in, t, label)

    def student_samples(self, noise: Tensor, cond: dict[str, Tensor], steps: int) -> Tensor:
        """The flow map's ``steps``-jump sample from ``noise`` on the grid it is trained for (uniform, or shifted by
        ``objective.grid_shift``: what ``sampler=flowmap`` does with the EMA weights and the same
        ``sampler.time_grid=shifted sampler.shift``), with the online weights: the jumps before the last without
        gradient (DMD2's backward simulation), the last with it."""
        shift = self.objective.pairs.grid_shift
        solver = FlowMapSolver(steps, "shifted", shift) if shift != 1.0 else FlowMapSolver(steps)
        grid = solver.grid().tolist()
        x = noise
        for k in range(steps):
            with torch.no_grad() if k < steps - 1 else contextlib.nullcontext():
                x = solver.step(lambda z, t, t_end: self.flow_map(z, t, t_end, cond), x, grid[k], grid[k + 1])
        return x

    def _distribution_matching_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The terms of distribution matching: ``dmd`` (the student's samples against the teacher's guided velocity,
        :func:`~latent_flow.flow.distribution_matching.distribution_matching_loss`; its gradient reaches the
        student only) and ``fake`` (the fake flow's flow-matching loss on the same samples, detached: it reaches the
        fake only); with ``objective.gan_weight > 0`` also ``gan_g`` and ``gan_d`` (:meth:`_adversarial_losses`).
        The conditions are the batch's, without dropout; the step count is drawn from ``dmd_steps``."""
        objective = self.objective
        cond = self.condition.from_batch(batch)
        x_data = batch["latent"]
        batch_size = x_data.shape[0]
        steps = objective.dmd_steps[int(torch.randint(len(objective.dmd_steps), ()))]
        x = self.student_samples(torch.randn_like(x_data), cond, steps)

        def uniform(bounds: tuple[float, float]):  # a draw of (batch_size,) times uniform in [t_min, t_max]
            t_min, t_max = bounds
            return lambda: t_min + (t_max - t_min) * torch.rand(batch_size, device=x.device)

        times = uniform(objective.dmd_times)
        t = times()
        noised = self.path.sample(torch.randn_like(x), x.detach(), t)
        v_real = classifier_free_guidance(self.teacher_velocity, cond, self.condition.null(cond), objective.cfg_scale)(
            noised.x_t, t
        )
        with torch.no_grad():
            v_fake = self._fake_velocity(noised.x_t, t, cond)
        terms = {"dmd": distribution_matching_loss(self.path, x, noised.x_t, t, v_real, v_fake)}
        fake_sample = self.path.sample(torch.randn_like(x), x.detach(), times())
        terms["fake"] = F.mse_loss(
            self._fake_velocity(fake_sample.x_t, fake_sample.t, cond).float(), fake_sample.target.float()
        )
        if self.discriminator is not None:
            terms.update(self._adversarial_losses(x, x_data, cond, uniform(objective.gan_times)))
        return terms

    def discriminator_logits(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """``D(x_t, t | cond)``: the discriminator head (``objective.gan_weight > 0``) on the fake flow's features at
        the noised latents ``x_t`` (inputs through the teacher's condition, as the fake flow's); differentiable in
        ``x_t`` and in the fake flow's and the head's weights."""
        if self.discriminator is None:
            raise ValueError(
                "this model has no discriminator: objective.gan_weight > 0 (with objective.dmd_weight > 0)"
            )
        condition = self.teacher_condition if self.teacher_condition is not None else self.condition
        x_in, label = condition.network_inputs(x_t, cond)
        return self.discriminator(self.fake.features(x_in, t, label))

    def _adversarial_losses(self, x: Tensor, x_data: Tensor, cond: dict[str, Tensor], times) -> dict[str, Tensor]:
        """DMD2's adversarial terms on the student's samples ``x`` and the batch's real latents ``x_data``, both
        noised to independent times from ``times()``, in one discriminator pass: ``gan_d`` (the logistic loss; its
        gradient reaches the fake flow and the head) and ``gan_g``, a surrogate whose gradient in ``x`` is exactly
        that of the generator loss ``mean softplus(-D(x_t))``, whose value is that loss, and which reaches the student
        only (the discriminator's weights get nothing from it)."""
        batch_size = x.shape[0]
        x_free = x.detach().float().requires_grad_(True)
        fake_noised = self.path.sample(torch.randn_like(x_free), x_free, times())
        real_noised = self.path.sample(torch.randn_like(x_free), x_data.detach().float(), times())
        both = {key: torch.cat([value, value]) for key, value in cond.items()}
        logits = self.discriminator_logits(
            torch.cat([fake_noised.x_t, real_noised.x_t]), torch.cat([fake_noised.t, real_noised.t]), both
        )
        fake_logits, real_logits = logits[:batch_size], logits[batch_size:]
        gen = generator_loss(fake_logits)
        (grad_x,) = torch.autograd.grad(gen, x_free, retain_graph=True)
        # the value of the generator loss, the gradient of the generator loss through the samples only
        surrogate = gen.detach() + ((x.float() - x.detach().float()) * grad_x).sum()
        return {"gan_g": surrogate, "gan_d": discriminator_loss(real_logits, fake_logits)}

    def _condition(self, use_ema: bool) -> torch.nn.Module:
        return self.condition_ema.module if (use_ema and self.condition_ema is not None) else self.condition

    def _network(self, use_ema: bool) -> torch.nn.Module:
        if use_ema and self.ema is not None:
            return self.ema.module
        return self.backbone

    def _callable(self, use_ema: bool):
        net = self._network(use_ema)
        if not self.hparams.compile:
            return net
        key = "ema" if (use_ema and self.ema is not None) else "raw"
        if key not in self._compiled:
            self._compiled[key] = torch.compile(net)
        return self._compiled[key]

    def velocity(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor], *, use_ema: bool = False) -> Tensor:
        """``v(x_t, t | cond)``: the one network call that training, guidance and solvers share."""
        x_in, label = self._condition(use_ema).network_inputs(x_t, cond)
        return self._callable(use_ema)(x_in, t, label)

    def flow_map(
        self, x: Tensor, t: Tensor, t_end: Tensor, cond: dict[str, Tensor], *, use_ema: bool = False
    ) -> Tensor:
        """``u(x, t, t_end | cond)``: the average velocity of the jump from ``t`` to ``t_end`` (flow-map models;
        ``t_end = t`` is :meth:`velocity`)."""
        if not self.is_flow_map:
            raise ValueError("this model was trained with objective=flow: it has a velocity, not a flow map")
        x_in, label = self._condition(use_ema).network_inputs(x, cond)
        return self._callable(use_ema)(x_in, t, label, t_end=t_end)

    def flow_map_fn(self, cond: dict[str, Tensor], *, cfg_scale: float = 1.0, use_ema: bool = True, cfg_interval=None):
        """A ``flow_map_fn(x, t, t_end)`` for ``sampler=flowmap`` (:class:`~latent_flow.sampling.flowmap.GuidedFlowMap`):
        classifier-free guidance on the average velocity when ``cfg_scale != 1`` (on top of any guidance the
        objective folded in, ``objective.cfg_scale``)."""
        if cfg_scale != 1.0 and not (self.condition.uses_label or self.condition.spatial_channels):
            raise ValueError(f"cfg_scale={cfg_scale} needs a conditional model (condition=none was trained)")
        model_fn = lambda x, t, t_end, c: self.flow_map(x, t, t_end, c, use_ema=use_ema)  # noqa: E731
        return GuidedFlowMap(model_fn, cond, self.condition.null(cond), cfg_scale, cfg_interval)

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        return self.velocity(x_t, t, cond or {})

    def velocity_fn(
        self, cond: dict[str, Tensor], *, cfg_scale: float = 1.0, use_ema: bool = True, cfg_interval=None, guide=None
    ):
        """A ``velocity_fn(x, t)`` for the solvers, with classifier-free guidance when ``cfg_scale != 1``
        (only for ``t`` in ``cfg_interval = [t_lo, t_hi]`` when given; see ``sampling/guidance.py``).

        ``guide``: another ``LatentFlowModule`` of the same latent space and condition (checked by
        :func:`latent_flow.training.checkpoints.check_guide`): autoguidance, ``v_guide + cfg_scale
        (v - v_guide)`` with both velocities conditional, instead of CFG's unconditional branch."""
        model_fn = lambda x, t, c: self.velocity(x, t, c, use_ema=use_ema)  # noqa: E731
        if guide is not None:
            guide_fn = lambda x, t, c: guide.velocity(x, t, c, use_ema=use_ema)  # noqa: E731
            return autoguidance(model_fn, guide_fn, cond, cfg_scale, cfg_interval)
        if cfg_scale != 1.0 and not (self.condition.uses_label or self.condition.spatial_channels):
            raise ValueError(f"cfg_scale={cfg_scale} needs a conditional model (condition=none was trained)")
        return classifier_free_guidance(model_fn, cond, self.condition.null(cond), cfg_scale, cfg_interval)

    # ------------------------------------------------------------------ autoencoder
    @property
    def autoencoder(self):
        """The frozen autoencoder (built from ``hparams.autoencoder`` on first use)."""
        if self._autoencoder is None:
            if self.hparams.autoencoder is None:
                raise RuntimeError("this checkpoint records no autoencoder config; cannot decode latents")
            ae = load_autoencoder(dict(self.hparams.autoencoder))
            stats = self.hparams.latent_stats
            if stats is not None:
                ae.set_latent_stats(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
            self.set_autoencoder(ae)
        if self._autoencoder.latent_mean.device != self.device:
            self._autoencoder.to(self.device)
        return self._autoencoder

    def set_autoencoder(self, ae) -> None:
        """Use an already built (frozen) autoencoder instead of rebuilding it from the config.

        Stored outside ``nn.Module``'s registry on purpose: it is not a submodule, so its
        weights never enter ``state_dict()`` (flow checkpoints) nor the optimizer.
        """
        self.__dict__["_autoencoder"] = ae

    # ------------------------------------------------------------------ training
    def _loss(self, batch: dict[str, Tensor], *, use_ema: bool, generator: torch.Generator | None = None) -> Tensor:
        if self.objective is not None:
            return self._flow_map_loss(batch, use_ema=use_ema, generator=generator)
        x_data = batch["latent"]
        batch_size = x_data.shape[0]
        if generator is None:
            x_noise = torch.randn_like(x_data)
            t = self.time_sampler(batch_size, x_data.device)
        else:
            x_noise = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype).to(x_data.device)
            t = self.time_sampler(batch_size, "cpu", generator=generator).to(x_data.device)
        if self.coupling != "independent":
            groups = batch["label"] if self.condition.uses_label else None
            x_noise = couple(self.coupling, x_noise, x_data, groups)
        sample = self.path.sample(x_noise, x_data, t)
        cond = self.condition.train_dropout(self.condition.from_batch(batch))
        pred = self.velocity(sample.x_t, sample.t, cond, use_ema=use_ema)
        return F.mse_loss(pred.float(), sample.target.float())

    def _flow_map_loss(
        self, batch: dict[str, Tensor], *, use_ema: bool, generator: torch.Generator | None = None
    ) -> Tensor:
        """The MeanFlow loss (:mod:`latent_flow.flow.meanflow`); its unweighted MSE is kept in ``_last_mse``.

        Times ``(s, t)`` from the objective's pair sampler, ``z_s`` and the conditional velocity from the
        path at ``s``, condition dropout (labels here for ``condition=label``; spatial conditions drop
        theirs in ``train_dropout``), guidance folded into the velocity for the rows whose condition is
        not entirely null, then, for the rows with ``s < t`` only (:meth:`_split_flow_map_loss`), one
        ``torch.func.jvp`` of the (uncompiled) network for ``u`` and its target, or with ``objective.target=shortcut``
        the network's own two half jumps. With ``objective.target=ode`` the target is the teacher's guided ODE
        integrated over each pair instead (:func:`latent_flow.flow.meanflow.ode_average_velocity`) and ``u`` one
        ordinary forward pass.
        """
        objective = self.objective
        x_data = batch["latent"]
        batch_size = x_data.shape[0]
        if generator is None:
            x_noise = torch.randn_like(x_data)
            s, t = objective.pairs(batch_size, x_data.device)
        else:
            x_noise = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype).to(x_data.device)
            s, t = (v.to(x_data.device) for v in objective.pairs(batch_size, "cpu", generator=generator))
        if self.coupling != "independent":
            groups = batch["label"] if self.condition.uses_label else None
            x_noise = couple(self.coupling, x_noise, x_data, groups)
        sample = self.path.sample(x_noise, x_data, s)
        cond = self.condition.train_dropout(self.condition.from_batch(batch))
        if self._objective_label_dropout > 0.0 and self.training and "label" in cond:
            label = cond["label"]
            drop = torch.rand(label.shape[0], device=label.device) < self._objective_label_dropout
            cond = {**cond, "label": torch.where(drop, torch.full_like(label, self.num_classes), label)}
        if objective.target_kind == "ode":  # the teacher's ODE integrated over each pair: no JVP
            teacher = self._teacher_row_velocity(cond)
            z = sample.x_t
            if objective.ode_start == "teacher":  # on the teacher's guided trajectory from this noise instead
                z = objective.trajectory_state(teacher, x_noise, s)
            elif objective.ode_start == "student":  # where the student's own jump from this noise lands
                own = lambda x, a, b: self.flow_map(x, a, b, cond, use_ema=use_ema)  # noqa: E731
                z = objective.student_state(own, x_noise, s)
            target = objective.ode_target(teacher, z, s, t)
            u = self.flow_map(z, s, t, cond, use_ema=use_ema)
            loss, mse = objective.loss(u, target)
            self._last_mse = mse
            return loss
        return self._split_flow_map_loss(sample.x_t, s, t, sample.target, cond, use_ema=use_ema)

    def _target_velocity(self, z: Tensor, s: Tensor, v: Tensor, cond: dict[str, Tensor], *, use_ema: bool) -> Tensor:
        """The velocity of the flow-map targets at ``(z, s)``: the path's conditional ``v`` or, distilling, the
        teacher's; guidance folded in (:meth:`MeanFlowObjective.guided_velocity`) on the rows whose condition is not
        entirely null, with the teacher's or the network's own unconditional velocity (stop-gradient)."""
        objective = self.objective
        velocity = v
        if objective.distils:  # the teacher's velocity at z_s replaces the conditional one (module docstring)
            velocity = self.teacher_velocity(z, s, cond).to(v.dtype)
        if not objective.guides:
            return velocity
        rows = z.shape[0]
        null = self.condition.null(cond)
        kept = torch.ones(rows, dtype=torch.bool, device=z.device)  # rows not entirely null
        same = torch.ones_like(kept)
        for key, value in cond.items():
            same &= (value == null[key].to(value.device)).reshape(rows, -1).all(dim=1).to(kept.device)
        kept &= ~same
        with torch.no_grad():  # stop-gradient
            if objective.distils:  # the teacher's own CFG: omega v_T(c) + (1 - omega) v_T(null)
                v_uncond = self.teacher_velocity(z, s, null)
            else:  # the network's own instantaneous velocities (u at t_end = s)
                v_uncond = self.velocity(z, s, null, use_ema=use_ema)
            v_cond = self.velocity(z, s, cond, use_ema=use_ema) if objective.cfg_kappa else None
        return objective.guided_velocity(velocity, v_uncond=v_uncond, v_cond=v_cond, guided=kept)

    def _split_flow_map_loss(
        self, z: Tensor, s: Tensor, t: Tensor, v: Tensor, cond: dict[str, Tensor], *, use_ema: bool
    ) -> Tensor:
        """The loss of ``objective.target=jvp`` or ``shortcut`` with the batch split into the rows with ``s < t`` and
        those with ``s = t``.

        The rows with ``s = t`` are flow matching whatever the target (the identity's JVP term has the factor
        ``t - s = 0``; a jump of length zero has no halves): their target is the (guided) velocity, computed for them
        only. Only the jumping rows pay for their target: the forward-mode pass of
        :func:`~latent_flow.flow.meanflow.flow_map_target` (float32, uncompiled; the other rows' ``u`` is one
        ordinary pass, compiled, under the ambient autocast) or the two half jumps of
        :func:`~latent_flow.flow.meanflow.shortcut_average_velocity` (no gradient; the student's ``u`` is then one
        ordinary pass over the whole batch). The adaptive weighting is per row, so the split loss is the unsplit one
        (``tests/unit/test_meanflow_module.py``)."""
        objective = self.objective
        every = torch.arange(z.shape[0], device=z.device)
        jump = t > s
        rows_j, rows_f = every[jump], every[~jump]

        def pick(rows: Tensor) -> dict[str, Tensor]:
            return {key: value[rows] for key, value in cond.items()}

        shortcut = objective.target_kind == "shortcut"
        us: list[Tensor] = []
        targets: list[Tensor] = []
        if rows_f.numel():
            cond_f = pick(rows_f)
            s_f = s[rows_f]
            targets.append(self._target_velocity(z[rows_f], s_f, v[rows_f], cond_f, use_ema=use_ema).float())
            if not shortcut:
                us.append(self.flow_map(z[rows_f], s_f, s_f, cond_f, use_ema=use_ema))
        if rows_j.numel():
            cond_j, z_j, s_j, t_j = pick(rows_j), z[rows_j], s[rows_j], t[rows_j]
            if shortcut:  # the half jumps, or the teacher's ODE on the jumps of at least shortcut_ode_from
                target_j = torch.empty(z_j.shape, dtype=torch.float32, device=z.device)
                ode = objective.ode_jumps(s_j, t_j)
                for part, by_teacher in ((~ode, False), (ode, True)):
                    if not part.any():
                        continue
                    c, z_p, s_p, t_p = pick(rows_j[part]), z_j[part], s_j[part], t_j[part]
                    if by_teacher:
                        target_p = objective.ode_target(self._teacher_row_velocity(c), z_p, s_p, t_p)
                    else:
                        own = lambda x, a, b, c=c: self.flow_map(x, a, b, c, use_ema=use_ema)  # noqa: E731
                        target_p = objective.shortcut_target(own, z_p, s_p, t_p)
                    target_j[part] = target_p.float()
                targets.append(target_j)
            else:  # the identity's target: the velocity is the JVP's tangent too
                velocity = self._target_velocity(z_j, s_j, v[rows_j], cond_j, use_ema=use_ema)
                condition = self._condition(use_ema)
                net = self._network(use_ema)  # forward-mode AD does not run through torch.compile: the plain module

                def u_fn(x: Tensor, start: Tensor, end: Tensor) -> Tensor:
                    x_in, label = condition.network_inputs(x, cond_j)
                    return net(x_in, start, label, t_end=end)

                out = objective.target(u_fn, z_j, s_j, t_j, velocity)
                targets.append(out.target.float())
                us.append(out.u)
        order = torch.argsort(torch.cat([rows_f, rows_j]))  # back to the batch's order (the loss is a mean)
        target = torch.cat(targets)[order]
        if shortcut:  # the student's pass is an ordinary one on every row (t_end = s on the flow-matching rows)
            u = self.flow_map(z, s, t, cond, use_ema=use_ema)
        else:
            u = torch.cat([x.float() for x in us])[order]
        loss, mse = objective.loss(u, target)
        self._last_mse = mse
        return loss

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, parts)``: what one training step descends (the objective's loss, plus distribution matching's
        two terms when it is on) and its detached parts for the logs (``train/mse``, ``train/dmd``, ``train/fake``)."""
        loss = self._loss(batch, use_ema=False)
        parts: dict[str, Tensor] = {}
        if self.objective is not None:  # the adaptive weighting makes the loss ~1: the unweighted error too
            parts["train/mse"] = self._last_mse
        if self.fake is not None:  # distribution matching: the student's and the fake flow's terms
            terms = self._distribution_matching_losses(batch)
            parts["train/dmd"], parts["train/fake"] = terms["dmd"].detach(), terms["fake"].detach()
            loss = loss + self.objective.dmd_weight * terms["dmd"] + terms["fake"]
            if "gan_g" in terms:  # DMD2's adversarial terms: the student's and the discriminator's
                parts["train/gan_g"], parts["train/gan_d"] = terms["gan_g"].detach(), terms["gan_d"].detach()
                objective = self.objective
                loss = (
                    loss + objective.gan_weight * terms["gan_g"] + objective.gan_discriminator_weight * terms["gan_d"]
                )
        return loss, parts

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, parts = self.training_loss(batch)
        for name, value in parts.items():
            self.log(name, value, on_step=True, on_epoch=False)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if opt is not None:
            self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA right after each optimizer step, before any callback (e.g. a checkpoint) sees the step
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.backbone)
        if self.condition_ema is not None:
            self.condition_ema.update(self.condition)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # fixed noise and times per batch: comparable numbers from one validation to the next
        gen = torch.Generator().manual_seed(10_000 + batch_idx)
        loss = self._loss(batch, use_ema=False, generator=gen)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        if self.objective is not None:
            self.log("val/mse", self._last_mse, on_epoch=True, sync_dist=True)
        if self.ema is not None:
            gen = torch.Generator().manual_seed(10_000 + batch_idx)
            self.log("val/loss_ema", self._loss(batch, use_ema=True, generator=gen), on_epoch=True, sync_dist=True)
            if self.objective is not None:
                self.log("val/mse_ema", self._last_mse, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        o = dict(self.hparams.optim)
        params: list = [p for p in self.parameters() if p.requires_grad]
        fake_flow = getattr(self, "fake", None)  # FlowTurbo's RefinerModule borrows this method and has none
        if fake_flow is not None:  # distribution matching's fake flow (and discriminator head): their own lr
            fake_params = list(fake_flow.parameters())
            if self.discriminator is not None:
                fake_params += list(self.discriminator.parameters())
            fake_ids = {id(p) for p in fake_params}
            params = [
                {"params": [p for p in params if id(p) not in fake_ids]},
                {"params": fake_params, "lr": float(o["lr"]) * self.objective.dmd_fake_lr_scale},
            ]
        fused = o.get("fused")
        kwargs = {}
        if fused is not None:
            kwargs["fused"] = bool(fused)
        optimizer = torch.optim.AdamW(
            params,
            lr=float(o["lr"]),
            weight_decay=float(o.get("weight_decay", 0.0)),
            betas=tuple(o.get("betas", (0.9, 0.999))),
            eps=float(o.get("eps", 1e-8)),
            **kwargs,
        )
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        warmup = int(o.get("warmup_steps", 0))
        cosine = bool(o.get("cosine", False))
        min_ratio = float(o.get("min_lr_ratio", 0.0))
        check_schedule(o, total)  # train checks it before its stages too
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine_factor(
                step, warmup_steps=warmup, total_steps=total, cosine=cosine, min_lr_ratio=min_ratio
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping (``trainer.gradient_clip_val``), also for a fused AdamW in bf16 autocast.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales gradients
        itself (``optim.fused=true``), because with fp16's loss scaling the gradients it would clip are
        still scaled. bf16 autocast (``bf16-mixed``) has no loss scaling, so the gradients are the true
        ones and are clipped here; ``16-mixed`` with a fused optimizer keeps Lightning's error.
        """
        fused = bool(getattr(optimizer, "defaults", {}).get("fused"))
        unscaled = getattr(self.trainer.precision_plugin, "scaler", None) is None
        if not (gradient_clip_val and fused and unscaled):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm is None or gradient_clip_algorithm == "norm":  # a str enum in Lightning
            torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
        else:
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.save_rng_states(checkpoint)  # every rank's RNG states, for an exact resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_rng_states(checkpoint)
        saved = checkpoint.get("hyper_parameters", {})
        saved_objective = (to_plain(saved.get("objective")) or {"name": "flow"})["name"]
        if saved_objective != self.hparams.objective["name"]:
            raise BackboneMismatchError(
                f"checkpoint was trained with objective={saved_objective}, but the config asks for "
                f"objective={self.hparams.objective['name']}; to turn a flow checkpoint into a flow map start a new "
                "run with init_from=<flow ckpt> (python -m latent_flow.train init_from=... objective=meanflow)"
            )
        for key in ("backbone", "latent_shape", "condition", "num_classes"):
            if key in saved and to_plain(saved[key]) != to_plain(self.hparams[key]):
                raise BackboneMismatchError(
                    f"checkpoint was written with {key}={saved[key]!r}, but the config asks for "
                    f"{key}={self.hparams[key]!r}; use the matching config (e.g. backbone=...) or another ckpt_path"
                )

    def initialise_from(self, checkpoint: dict[str, Any]) -> dict[str, list[str]]:
        """Start from the weights of another run's checkpoint (``init_from=``): backbone, EMA and condition
        encoder, for instance a flow checkpoint converted into a flow map (``objective=meanflow``).

        ``checkpoint`` is the loaded file (:func:`latent_flow.training.checkpoints.load_checkpoint`). Its latent
        shape, condition, class count and backbone config must be this run's (``BackboneMismatchError``
        otherwise). Weights this model has and the checkpoint lacks may only be a flow map's interval embedder
        (``h_embedder``), which keeps its initialisation: zero output, so the converted model *is* the flow
        model (``u(x, t, t_end) = v(x, t)`` for every ``t_end``) until training moves it. A checkpoint without
        EMA weights gives the EMA a copy of its backbone. Optimizer, step count and RNG states start fresh.
        With ``objective.velocity=teacher`` the checkpoint must be a flow (``objective=flow``): its EMA network
        (else its backbone) and condition encoder become the frozen teacher (and the starting point of distribution
        matching's fake flow, ``objective.dmd_weight > 0``); or a flow map distilled earlier, which brings its
        teacher (and its fake flow, if it has one) with it, so a distillation goes on with other options (e.g.
        distribution matching switched on). A teacher the new run does not use is dropped.
        Returns ``{"initialised": [...], "missing": [...], "teacher": [...]}`` (parameter names).
        """
        saved = checkpoint.get("hyper_parameters") or {}
        if "state_dict" not in checkpoint or "backbone" not in saved:
            raise ValueError("init_from: not a latent_flow flow checkpoint (no state_dict / backbone hyper-parameters)")
        for key in ("backbone", "latent_shape", "condition", "num_classes"):
            if to_plain(saved.get(key)) != to_plain(self.hparams[key]):
                raise BackboneMismatchError(
                    f"init_from: the checkpoint was written with {key}={saved.get(key)!r}, but the config asks for "
                    f"{key}={self.hparams[key]!r}; use the same {key} as the checkpoint's run"
                )
        state = dict(checkpoint["state_dict"])
        own = self.state_dict()
        if self.ema is not None and not any(k.startswith("ema.") for k in state):  # no EMA saved: copy the weights
            state.update({f"ema.module.{k}": v for k, v in _prefixed(state, "backbone.").items()})
        aux = {  # a distillation's own networks, by their state prefix
            "teacher.": self.teacher,
            "teacher_condition.": self.teacher_condition,
            "fake.": self.fake,
            "discriminator.": self.discriminator,
        }
        teacher_keys = {k for k in own if k.startswith(tuple(aux))}
        saved_objective = (to_plain(saved.get("objective")) or {"name": "flow"})["name"]
        # a flow map distilled earlier (objective=meanflow with a teacher) brings its own teacher (and fake flow)
        carries_teacher = saved_objective != "flow" and any(k.startswith("teacher.") for k in state)
        if self.teacher is not None and saved_objective != "flow" and not carries_teacher:
            raise ValueError(
                f"init_from: objective.velocity=teacher distils a flow checkpoint (objective=flow) or goes on from a "
                f"distilled flow map that keeps its teacher; this one was trained with objective={saved_objective} "
                "without a teacher"
            )
        unused = tuple(prefix for prefix, network in aux.items() if network is None)
        if unused:  # a teacher (fake flow, discriminator) this run does not use is not loaded
            state = {k: v for k, v in state.items() if not k.startswith(unused)}
        unexpected = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state) - teacher_keys)
        allowed = [k for k in missing if ".h_embedder." in f".{k}" or k == "ema.num_updates"]
        if unexpected or set(missing) - set(allowed):
            raise BackboneMismatchError(
                f"init_from: weights do not match this model (unexpected {unexpected[:5]}, missing "
                f"{sorted(set(missing) - set(allowed))[:5]}); only a flow map's interval embedder may be new"
            )
        self.load_state_dict(state, strict=False)
        if self.teacher is not None:
            if carries_teacher:  # the distilled flow map's teacher, loaded above with the rest
                teacher_state = _prefixed(state, "teacher.")
            else:  # the flow's EMA network (its sampling weights), else its raw backbone
                net_prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "backbone."
                teacher_state = _prefixed(state, net_prefix)
                self.teacher.load_state_dict(teacher_state)
                if self.teacher_condition is not None:
                    cond_prefix = (
                        "condition_ema.module." if any(k.startswith("condition_ema.") for k in state) else "condition."
                    )
                    self.teacher_condition.load_state_dict(_prefixed(state, cond_prefix))
            if self.fake is not None and not any(k.startswith("fake.") for k in state):
                self.fake.load_state_dict(teacher_state)  # distribution matching's fake flow starts as the teacher
        if self.ema is not None:
            self.ema.num_updates.zero_()  # the new run's EMA warm-up starts over, from the loaded weights
        return {"initialised": sorted(set(state) & set(own)), "missing": missing, "teacher": sorted(teacher_keys)}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_latents(
        self,
        solver: Solver,
        *,
        indices: Sequence[int],
        labels: Tensor | None = None,
        cfg_scale: float = 1.0,
        seed: int = 0,
        use_ema: bool = True,
        spatial_cond: dict[str, Tensor] | None = None,
        cfg_interval: Sequence[float] | None = None,
        guide=None,
    ):
        """Sample latents for the given sample indices (noise seeded per index).

        ``cfg_interval=[t_lo, t_hi]``: guidance only for ``t_lo <= t < t_hi`` (t = 0 noise), the
        conditional velocity elsewhere. ``guide``: autoguidance by that weaker model (see
        :meth:`velocity_fn`); the result then carries ``guide_nfe``, the guide's evaluations. Stochastic solvers (``solver.stochastic``, e.g.
        ``euler_maruyama``) also get this model's path (for the score) and per-index step noise.
        Returns the solver's ``SampleResult`` (``.x`` latents, ``.nfe`` model calls, ``.model_rows``
        the rows all those calls passed through the networks: ``nfe x batch`` unguided, twice that
        under CFG everywhere, less with ``cfg_interval``, main plus guide rows with autoguidance; not set
        for FlowTurbo, which evaluates its own base and refiner networks and counts their NFE apart).
        """
        x_init = noise_for_indices(indices, self.latent_shape, seed=seed, device=self.device)
        cond: dict[str, Tensor] = {}
        if self.condition.spatial_channels:  # inpaint / semantic: latent_flow.conditional_sampling builds these
            if not spatial_cond:
                raise ValueError(
                    f"this model is conditioned on {self.hparams.condition['name']!r}: pass spatial_cond "
                    "(see latent_flow.generation.spatial_condition, or sample with inputs=/masks=/semantic=)"
                )
            cond.update({k: v.to(self.device) for k, v in spatial_cond.items()})
        elif spatial_cond:
            raise ValueError("spatial_cond given, but this model has no spatial condition")
        if self.condition.uses_label:
            if labels is None:
                raise ValueError("this model is label-conditional: pass labels (or use the null class)")
            cond["label"] = labels.to(self.device).long()
        elif labels is not None:
            raise ValueError("this model was trained without labels (condition=none); do not pass labels")
        was_training = self.training
        self.eval()
        try:
            if getattr(solver, "flow_map", False):  # sampler=flowmap: jumps of the average velocity
                if not self.is_flow_map:
                    raise ValueError(
                        "sampler=flowmap needs a flow-map model (trained with objective=meanflow); this one is a "
                        "flow: use an ODE solver (sampler=heun, euler, ...)"
                    )
                if guide is not None:
                    raise ValueError("autoguidance (guide_ckpt_path=) is not supported with sampler=flowmap")
                velocity = self.flow_map_fn(cond, cfg_scale=cfg_scale, use_ema=use_ema, cfg_interval=cfg_interval)
            else:
                velocity = self.velocity_fn(
                    cond, cfg_scale=cfg_scale, use_ema=use_ema, cfg_interval=cfg_interval, guide=guide
                )
            if getattr(solver, "stochastic", False):  # SDE: the score from this path, noise per sample index
                result = solver.sample(velocity, x_init, path=self.path, noise_indices=list(indices), noise_seed=seed)
            else:
                result = solver.sample(velocity, x_init)
            if guide is not None:
                result.guide_nfe = int(velocity.guided_calls)
            if velocity.model_calls == result.nfe:  # the solver ran this velocity (FlowTurbo runs its own networks)
                result.model_rows = int(velocity.forward_samples)  # network rows: CFG's doubled batch, the guide's
            return result
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1] with the frozen autoencoder (in float32)."""
        return self.autoencoder.decode(latents.float()).clamp(-1, 1)

    # ------------------------------------------------------------------ bookkeeping
    # ------------------------------------------------------------------ distributed
    def on_train_start(self) -> None:
        """Reseed the noise / time RNGs with ``seed + global_rank`` (different draws per DDP rank), or,
        resuming, restore the RNG states the checkpoint saved for this rank (exact continuation)."""
        seeded = self.seed_or_restore_rng(int(self.hparams.get("seed", 0)))
        self._rank_seed = seeded if seeded is not None else -1  # -1: restored from the checkpoint
        self._first_noise_checksum = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # record (without consuming the RNG) the noise the first training step is about to draw
        if self._first_noise_checksum is None and isinstance(batch, dict) and "latent" in batch:
            x = batch["latent"]
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                self._first_noise_checksum = float(torch.randn_like(x).double().sum().item())

    def parameter_checksum(self) -> Tensor:
        """``[trained, ema]`` float64 checksums (sum and sum of squares of all parameters).

        ``trained``: the backbone and the condition's trainable parameters (e.g. the semantic map
        encoder); ``ema``: their EMA copies.
        """

        def _sum(module: torch.nn.Module | None) -> float:
            if module is None:
                return 0.0
            total = torch.zeros((), dtype=torch.float64)
            for p in module.parameters():
                d = p.detach().to(device="cpu", dtype=torch.float64)
                total += d.sum() + d.square().sum()
            return float(total)

        def _ema(ema: EMA | None) -> torch.nn.Module | None:
            return ema.module if ema is not None else None

        return torch.tensor(
            [_sum(self.backbone) + _sum(self.condition), _sum(_ema(self.ema)) + _sum(_ema(self.condition_ema))],
            dtype=torch.float64,
        )

    def on_train_end(self) -> None:
        trainer = self.trainer
        if trainer.world_size <= 1:
            return
        local = torch.cat(
            [
                self.parameter_checksum(),
                torch.tensor(
                    [
                        float(self._rank_seed if self._rank_seed is not None else -1),
                        float("nan") if self._first_noise_checksum is None else self._first_noise_checksum,
                    ],
                    dtype=torch.float64,
                ),
            ]
        ).to(self.device)
        gathered = self.all_gather(local).reshape(trainer.world_size, -1).double().cpu()  # (world, 4)
        backbone, ema = gathered[:, 0].tolist(), gathered[:, 1].tolist()

        def _same(values: list[float]) -> bool:
            return all(abs(v - values[0]) <= 1e-9 * max(1.0, abs(values[0])) for v in values)

        in_sync = _same(backbone) and _same(ema)
        if trainer.global_rank == 0:
            report = {
                "world_size": int(trainer.world_size),
                "global_step": int(trainer.global_step),
                "in_sync": in_sync,
                "ranks": [
                    {
                        "rank": r,
                        "seed": int(gathered[r, 2]),
                        "first_noise_checksum": float(gathered[r, 3]),
                        "backbone_checksum": backbone[r],
                        "ema_checksum": ema[r],
                    }
                    for r in range(trainer.world_size)
                ],
            }
            out = Path(trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "ddp_sync.json").write_text(json.dumps(report, indent=2))
        if not in_sync:
            raise RuntimeError(
                f"DDP ranks ended training with different parameters: backbone checksums {backbone}, "
                f"EMA checksums {ema} (see {trainer.default_root_dir}/ddp_sync.json); "
                "a rank diverged (non-synchronised parameter, buffer or EMA update)"
            )
