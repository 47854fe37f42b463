"""The FlowTurbo sampler: Heun, pseudo-corrector and refiner blocks (``docs/methods.md`` section 3).

Time convention: ``t`` in [0, 1], **t = 0 noise, t = 1 data**; we integrate ``dx/dt = v(x, t)``
forward on a grid ``0 = t_0 < ... < t_N = 1`` (uniform by default) with ``N = N_H + N_P + N_R``
steps, blocks in the order H, P, R. A schedule is written ``H1P5R3``. With ``h = t_{i+1} - t_i``:

- **H** (Heun): ``d = v(x_i, t_i)``, ``x~ = x_i + h d``, ``d' = v(x~, t_{i+1})``,
  ``x_{i+1} = x_i + h (d + d') / 2``. 2 base-model evaluations.
- **P** (pseudo corrector): the same update, but ``d`` is the carried ``d'`` of the previous step
  (evaluated at the previous step's predictor, not at ``x_i``). 1 base evaluation; the error this
  makes in ``d`` is ``O(h^2)``, so the method stays second order (tested on a linear ODE).
- **R** (refiner): the same update with both velocities from the refiner around the carried one:
  ``d = c + r(x_i, c, t_i)`` (``c`` the carried velocity), ``d' = d + r(x~, d, t_{i+1})``.
  0 base evaluations, 2 refiner evaluations.

A schedule without an H block starts with one extra base evaluation ``v(x_0, 0)`` (there is no
carried velocity yet); it is counted like any other.

**Classifier-free guidance.** With ``scale != 1`` every base evaluation is one batched call on
``[cond; null]`` (2B rows) and the sampler carries both halves *unguided*. The refiner, which was
trained with the label dropped with p = 0.1 (the same drop in its base calls), refines the
conditional and the unconditional velocity separately (one batched refiner call on 2B rows with
``[labels; null]``); the guided velocity ``v_u + s (v_c - v_u)`` is formed only for the update of
``x``. So the refiner sees the *unguided* conditional and unconditional velocities, never the
guided one.

**Counting.** :class:`FlowTurboResult` has ``base_nfe`` (base-model calls; a batched CFG call
counts 1) and ``refiner_nfe`` (refiner calls), and ``nfe = base_nfe``. Each block type adds its
fixed number of calls (H: 2 base, P: 1 base, R: 2 refiner); ``tests/unit/test_flowturbo.py``
checks these against forward hooks on the networks.

**Sample-aware compilation** (``compile=True``): each block type (network calls + guidance +
update) is one function, ``torch.compile``-d once per sampler and reused for every step of that
type; times are passed as tensors, so changing ``t`` does not recompile.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from latent_flow.flowturbo.module import base_condition, base_network, load_refiner
from latent_flow.sampling.guidance import GUIDE_ROW, GuidedVelocity, guidance_rows
from latent_flow.sampling.solvers import SampleResult, Solver, VelocityFn
from latent_flow.sampling.time_grids import TIME_GRID_KINDS
from latent_flow.sampling.time_grids import time_grid as make_time_grid

__all__ = [
    "FLOWTURBO_OPTIONS",
    "FlowTurboResult",
    "FlowTurboSolver",
    "Schedule",
    "TurboNetworks",
    "build_flowturbo_solver",
    "heun_step",
    "initial_velocity",
    "parse_schedule",
    "pseudo_step",
    "refine_step",
]

_BLOCK_NAMES = {"H": "Heun", "P": "pseudo corrector", "R": "refiner"}
_ORDER = "HPR"
#: (base calls, refiner calls) per step of each block type, and for the initial velocity ("V")
CALLS_PER_STEP: Mapping[str, tuple[int, int]] = {"H": (2, 0), "P": (1, 0), "R": (0, 2), "V": (1, 0)}


# --------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Schedule:
    """Step counts of the H (Heun), P (pseudo corrector) and R (refiner) blocks, run in that order."""

    heun: int
    pseudo: int
    refine: int

    @property
    def steps(self) -> int:
        return self.heun + self.pseudo + self.refine

    def kinds(self) -> list[str]:
        """``["H"] * heun + ["P"] * pseudo + ["R"] * refine``."""
        return ["H"] * self.heun + ["P"] * self.pseudo + ["R"] * self.refine

    @property
    def needs_initial_velocity(self) -> bool:
        return self.heun == 0

    def expected_nfe(self) -> tuple[int, int]:
        """``(base_nfe, refiner_nfe)`` of one ``sample`` call."""
        kinds = (["V"] if self.needs_initial_velocity else []) + self.kinds()
        return sum(CALLS_PER_STEP[k][0] for k in kinds), sum(CALLS_PER_STEP[k][1] for k in kinds)

    def __str__(self) -> str:
        return "".join(f"{k}{n}" for k, n in zip(_ORDER, (self.heun, self.pseudo, self.refine)) if n)


def parse_schedule(schedule: str | Schedule) -> Schedule:
    """Parse ``"H1P5R3"``: blocks H, P, R (each at most once, in this order), counts >= 1.

    Raises ``ValueError`` that names the problem: an empty string, an unknown block letter, a
    block without a count, a zero count, or blocks out of order / repeated.
    """
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"FlowTurbo schedule must be a string like 'H1P5R3', got {schedule!r}")
    text = schedule.strip().upper()
    hint = "write e.g. 'H1P5R3': H = Heun, P = pseudo corrector, R = refiner steps, in this order"
    if not text:
        raise ValueError(f"empty FlowTurbo schedule; {hint}")
    tokens = re.findall(r"([A-Z])(\d*)|(.)", text)
    counts: dict[str, int] = {}
    last = -1
    for letter, digits, other in tokens:
        if other:
            raise ValueError(f"unexpected character {other!r} in FlowTurbo schedule {schedule!r}; {hint}")
        if letter not in _BLOCK_NAMES:
            raise ValueError(
                f"unknown block {letter!r} in FlowTurbo schedule {schedule!r}; valid blocks: "
                + ", ".join(f"{k} ({v})" for k, v in _BLOCK_NAMES.items())
            )
        if not digits:
            raise ValueError(f"block {letter!r} in FlowTurbo schedule {schedule!r} has no step count; {hint}")
        n = int(digits)
        if n < 1:
            raise ValueError(
                f"block {letter}{digits} in FlowTurbo schedule {schedule!r}: step counts must be >= 1 "
                "(leave a block out instead of giving it 0 steps)"
            )
        pos = _ORDER.index(letter)
        if pos <= last:
            raise ValueError(
                f"FlowTurbo schedule {schedule!r}: blocks must come in the order H, P, R, each at most once "
                f"(block {letter} after {_ORDER[last]}); reordering them wrecks sample quality"
            )
        last = pos
        counts[letter] = n
    return Schedule(counts.get("H", 0), counts.get("P", 0), counts.get("R", 0))


# --------------------------------------------------------------------------- networks
class TurboNetworks(nn.Module):
    """The two networks FlowTurbo calls, behind the base model's condition encoder.

    Args:
        base: the base velocity network ``base(x_in, t, y) -> v`` (the EMA weights of a
            ``LatentFlowModule``), in eval mode.
        refiner: ``refiner(x_in, v_prev, t, y) -> offset`` (:class:`~latent_flow.flowturbo.refiner.VelocityRefiner`)
            or ``None`` (then R blocks are refused).
        condition: the base model's condition encoder (``network_inputs(x, cond) -> (x_in, y)``), the
            one that goes with ``base``: its EMA copy for the EMA backbone
            (:func:`~latent_flow.flowturbo.module.base_condition`), as ``model.velocity(use_ema=True)``.
    """

    def __init__(self, base: nn.Module, refiner: nn.Module | None, condition: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.refiner = refiner
        self.condition = condition

    def base_velocity(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        x_in, y = self.condition.network_inputs(x, cond)
        return self.base(x_in, t, y)

    def refined_velocity(self, x: Tensor, v_prev: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """``v_prev + r(x_in, v_prev, t, y)``."""
        x_in, y = self.condition.network_inputs(x, cond)
        return v_prev + self.refiner(x_in, v_prev, t, y)


# --------------------------------------------------------------------------- one step per block type
def _rows(x: Tensor, branches: int) -> Tensor:
    return x if branches == 1 else torch.cat([x, x], dim=0)


def _guided(raw: Tensor, scale: float) -> Tensor:
    if scale == 1.0:
        return raw
    v_c, v_u = raw.chunk(2, dim=0)
    return v_u + scale * (v_c - v_u)


def _step_size(t: Tensor, t_next: Tensor, x: Tensor) -> Tensor:
    return (t_next - t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def initial_velocity(nets: TurboNetworks, x: Tensor, t: Tensor, cond: dict[str, Tensor], scale: float) -> Tensor:
    """The raw (per-branch, unguided) velocity at ``(x, t)``: 1 base call."""
    branches = 1 if scale == 1.0 else 2
    return nets.base_velocity(_rows(x, branches), _rows(t, branches), cond)


def heun_step(
    nets: TurboNetworks, x: Tensor, t: Tensor, t_next: Tensor, cond: dict[str, Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """H: ``(x_{i+1}, carried raw velocity d')``; 2 base calls."""
    b = 1 if scale == 1.0 else 2
    h = _step_size(t, t_next, x)
    d = _guided(nets.base_velocity(_rows(x, b), _rows(t, b), cond), scale)
    x_pred = x + h * d
    raw_next = nets.base_velocity(_rows(x_pred, b), _rows(t_next, b), cond)
    return x + (0.5 * h) * (d + _guided(raw_next, scale)), raw_next


def pseudo_step(
    nets: TurboNetworks, x: Tensor, carried: Tensor, t: Tensor, t_next: Tensor, cond: dict[str, Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """P: Heun's update with ``d`` = the carried velocity; 1 base call."""
    b = 1 if scale == 1.0 else 2
    h = _step_size(t, t_next, x)
    d = _guided(carried, scale)
    x_pred = x + h * d
    raw_next = nets.base_velocity(_rows(x_pred, b), _rows(t_next, b), cond)
    return x + (0.5 * h) * (d + _guided(raw_next, scale)), raw_next


def refine_step(
    nets: TurboNetworks, x: Tensor, carried: Tensor, t: Tensor, t_next: Tensor, cond: dict[str, Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """R: Heun's update with both velocities from the refiner around the carried one; 2 refiner calls."""
    b = 1 if scale == 1.0 else 2
    h = _step_size(t, t_next, x)
    raw = nets.refined_velocity(_rows(x, b), carried, _rows(t, b), cond)
    d = _guided(raw, scale)
    x_pred = x + h * d
    raw_next = nets.refined_velocity(_rows(x_pred, b), raw, _rows(t_next, b), cond)
    return x + (0.5 * h) * (d + _guided(raw_next, scale)), raw_next


_STEP_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "V": initial_velocity,
    "H": heun_step,
    "P": pseudo_step,
    "R": refine_step,
}


# --------------------------------------------------------------------------- solver
@dataclass
class FlowTurboResult(SampleResult):
    """:class:`SampleResult` with separate counts: ``nfe = base_nfe`` (base-model calls) and ``refiner_nfe``."""

    base_nfe: int = 0
    refiner_nfe: int = 0
    schedule: str = ""


class FlowTurboSolver(Solver):
    """FlowTurbo on a fixed grid (see the module docstring).

    Args:
        schedule: ``"H1P5R3"`` or a :class:`Schedule`.
        nets: the :class:`TurboNetworks` to call (``build_flowturbo_solver`` makes them from a model).
        time_grid, shift: as for the other fixed-step solvers (``"uniform"`` or ``"shifted"``).
        compile: ``torch.compile`` each block type once and reuse it for all its steps.
        compile_backend: the ``torch.compile`` backend (``"inductor"`` on GPUs; ``"eager"`` /
            ``"aot_eager"`` for cheap checks) or a backend callable.
        compile_mode: ``torch.compile``'s ``mode`` (e.g. ``"max-autotune"``), or ``None``.

    ``sample(velocity_fn, x_init)`` takes the model's guided velocity
    (``LatentFlowModule.velocity_fn``, i.e. ``model.sample_latents(solver, ...)``) only to read the
    condition, its null counterpart and the guidance scale; the networks are called through ``nets``.
    ``integrate(x_init, cond, null_cond, scale)`` is the same without a model.
    """

    def __init__(
        self,
        schedule: str | Schedule,
        nets: TurboNetworks,
        *,
        time_grid: str = "uniform",
        shift: float = 1.0,
        compile: bool = False,
        compile_backend: str | Callable = "inductor",
        compile_mode: str | None = None,
    ) -> None:
        self.schedule = parse_schedule(schedule)
        if time_grid not in TIME_GRID_KINDS:
            raise ValueError(f"unknown time_grid {time_grid!r}; valid: {list(TIME_GRID_KINDS)}")
        self._grid = make_time_grid(self.schedule.steps, time_grid, shift)
        if self.schedule.refine and nets.refiner is None:
            raise ValueError(
                f"schedule {self.schedule} has refiner (R) steps but no refiner was given: "
                "set sampler.refiner_ckpt_path (train one with `python -m latent_flow.train "
                "+experiment=<name>_refiner base_ckpt_path=...`) or use a schedule without R"
            )
        self.nets = nets
        self.time_grid = time_grid
        self.shift = float(shift)
        self.compile = bool(compile)
        self.compile_backend = compile_backend
        self.compile_mode = compile_mode
        self._compiled: dict[str, Callable[..., Any]] = {}

    @property
    def expected_nfe(self) -> int:
        return self.schedule.expected_nfe()[0]

    def grid(self) -> Tensor:
        return self._grid.clone()

    def step_function(self, kind: str) -> Callable[..., Any]:
        """The (compiled once, when ``compile``) function of block type ``kind`` in ``"VHPR"``."""
        fn = _STEP_FUNCTIONS[kind]
        if not self.compile:
            return fn
        if kind not in self._compiled:
            options: dict[str, Any] = {"backend": self.compile_backend, "dynamic": False}
            if self.compile_mode is not None:
                options["mode"] = self.compile_mode
            self._compiled[kind] = torch.compile(fn, **options)
        return self._compiled[kind]

    def _integrate(self, f: VelocityFn, x_init: Tensor, return_trajectory: bool):  # pragma: no cover - unused
        raise NotImplementedError("FlowTurboSolver integrates with its own networks; call sample() or integrate()")

    def sample(
        self,
        velocity_fn: VelocityFn,
        x_init: Tensor,
        *,
        return_trajectory: bool = False,
        no_grad: bool = True,
    ) -> FlowTurboResult:
        if not isinstance(velocity_fn, GuidedVelocity):
            raise TypeError(
                "FlowTurboSolver.sample needs the model's guided velocity (use model.sample_latents(solver, ...) "
                f"or solver.integrate(x_init, cond, null_cond, scale)), got {type(velocity_fn).__name__}"
            )
        if GUIDE_ROW in velocity_fn.cond:
            raise ValueError(
                "sampler=flowturbo does not support autoguidance (its refiner was trained against the base's own "
                "guided velocity); sample with guide_ckpt_path=null, or with another sampler"
            )
        if velocity_fn.batched and not velocity_fn.interval_is_everywhere:
            raise ValueError(
                f"sampler=flowturbo does not support a guidance interval yet (cfg_interval={list(velocity_fn.interval)}): "
                "its blocks carry the guided velocities across steps; use cfg_interval=null, or another sampler"
            )
        return self.integrate(
            x_init,
            velocity_fn.cond,
            velocity_fn.null_cond,
            velocity_fn.scale,
            return_trajectory=return_trajectory,
            no_grad=no_grad,
        )

    def integrate(
        self,
        x_init: Tensor,
        cond: Mapping[str, Tensor] | None = None,
        null_cond: Mapping[str, Tensor] | None = None,
        scale: float = 1.0,
        *,
        return_trajectory: bool = False,
        no_grad: bool = True,
    ) -> FlowTurboResult:
        """Integrate from ``x_init`` (t = 0, noise) to t = 1 (data)."""
        if not isinstance(x_init, Tensor) or not x_init.is_floating_point() or x_init.dim() < 1:
            raise ValueError("x_init must be a floating point tensor of shape (B, ...)")
        scale = float(scale)
        batch = x_init.shape[0]
        cond_rows = guidance_rows(dict(cond or {}), dict(null_cond or {}), batch, scale)
        tdtype = x_init.dtype if x_init.dtype in (torch.float32, torch.float64) else torch.float32
        times = [torch.full((batch,), float(v), dtype=tdtype, device=x_init.device) for v in self._grid.tolist()]
        base_nfe = refiner_nfe = 0
        x, carried = x_init, None
        trajectory = [x] if return_trajectory else None
        ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
        with ctx:
            if self.schedule.needs_initial_velocity:
                carried = self.step_function("V")(self.nets, x, times[0], cond_rows, scale)
                base_nfe += CALLS_PER_STEP["V"][0]
            for i, kind in enumerate(self.schedule.kinds()):
                fn = self.step_function(kind)
                if kind == "H":
                    x, carried = fn(self.nets, x, times[i], times[i + 1], cond_rows, scale)
                else:
                    x, carried = fn(self.nets, x, carried, times[i], times[i + 1], cond_rows, scale)
                base_nfe += CALLS_PER_STEP[kind][0]
                refiner_nfe += CALLS_PER_STEP[kind][1]
                if trajectory is not None:
                    trajectory.append(x)
        out_times = self._grid.to(device=x.device, dtype=tdtype) if return_trajectory else None
        return FlowTurboResult(
            x=x,
            nfe=base_nfe,
            trajectory=trajectory,
            times=out_times,
            base_nfe=base_nfe,
            refiner_nfe=refiner_nfe,
            schedule=str(self.schedule),
        )

    def __repr__(self) -> str:
        return (
            f"FlowTurboSolver(schedule={str(self.schedule)!r}, time_grid={self.time_grid!r}, shift={self.shift}, "
            f"compile={self.compile})"
        )


# --------------------------------------------------------------------------- from a trained model
_SOLVER_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


#: options of ``sampler=flowturbo`` (``conf/sampler/flowturbo.yaml``) and their defaults
FLOWTURBO_OPTIONS: Mapping[str, Any] = {
    "schedule": "H1P5R3",
    "refiner_ckpt_path": None,
    "compile": False,
    "compile_backend": "inductor",
    "compile_mode": None,
    "time_grid": "uniform",
    "shift": 1.0,
}


def build_flowturbo_solver(model, *, use_ema: bool = True, **options: Any) -> FlowTurboSolver:
    """A :class:`FlowTurboSolver` for a ``LatentFlowModule`` and a refiner checkpoint.

    Options (:data:`FLOWTURBO_OPTIONS`): ``schedule``, ``refiner_ckpt_path`` (needed when the
    schedule has R steps), ``compile``, ``compile_backend``, ``compile_mode``, ``time_grid``, ``shift``.
    The base network is the model's EMA copy with the EMA condition encoder (what the refiner was
    trained against); the refiner checkpoint must record this base (checked by a hash of both, see
    :func:`~latent_flow.flowturbo.module.load_refiner`). Solvers are cached per model and options,
    so sampling batch after batch loads the refiner and compiles the blocks once.
    """
    unknown = sorted(set(options) - set(FLOWTURBO_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for sampler 'flowturbo'; valid options: {list(FLOWTURBO_OPTIONS)}"
        )
    opts = {**FLOWTURBO_OPTIONS, **options}
    schedule, refiner_ckpt_path, compile = opts["schedule"], opts["refiner_ckpt_path"], opts["compile"]
    compile_backend, compile_mode = opts["compile_backend"], opts["compile_mode"]
    time_grid, shift = opts["time_grid"], opts["shift"]
    if not use_ema:
        raise ValueError(
            "sampler=flowturbo uses the base model's EMA weights, which its refiner was trained against; "
            "use_ema=false is not supported with it"
        )
    parsed = parse_schedule(schedule)
    key = (str(parsed), refiner_ckpt_path, bool(compile), str(compile_backend), compile_mode, time_grid, float(shift))
    per_model = _SOLVER_CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    if refiner_ckpt_path is None and parsed.refine:
        raise ValueError(
            f"sampler.schedule={parsed} has refiner (R) steps: set sampler.refiner_ckpt_path=<refiner run>/checkpoints/last.ckpt "
            "(train one with `python -m latent_flow.train +experiment=<name>_refiner base_ckpt_path=...`)"
        )
    # one TurboNetworks per (model, refiner): solvers of other schedules reuse it, and with it the
    # compiled block functions (torch.compile's guards check the networks' identity)
    nets_key = ("nets", refiner_ckpt_path)
    if nets_key not in per_model:
        refiner = None
        if refiner_ckpt_path is not None:
            refiner = load_refiner(refiner_ckpt_path, model).to(model.device).eval()
        # the EMA backbone with the EMA condition encoder: the networks of model.velocity(use_ema=True)
        per_model[nets_key] = TurboNetworks(base_network(model), refiner, base_condition(model)).eval()
    nets = per_model[nets_key]
    solver = FlowTurboSolver(
        parsed,
        nets,
        time_grid=time_grid,
        shift=shift,
        compile=compile,
        compile_backend=compile_backend,
        compile_mode=compile_mode,
    )
    per_model[key] = solver
    return solver
