"""Flow-matching maths: schedulers, affine paths, training-time samplers.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**;
``x_t = alpha_t x_data + sigma_t x_noise`` and the regression target is
``u_t = d_alpha_t x_data + d_sigma_t x_noise``. Flow maps (average velocities over an interval,
the MeanFlow objective): :mod:`latent_flow.flow.meanflow`. No ``torch.nn`` here.
"""

from latent_flow.flow.likelihood import LikelihoodResult, log_likelihood
from latent_flow.flow.meanflow import (
    FlowMapFn,
    FlowMapTarget,
    MeanFlowObjective,
    TimePairSampler,
    adaptive_weight,
    flow_map_target,
)
from latent_flow.flow.path import AffinePath, PathSample
from latent_flow.flow.schedulers import (
    SCHEDULERS,
    CondOTScheduler,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
    build_scheduler,
)
from latent_flow.flow.time_sampling import (
    TIME_SAMPLERS,
    LogitNormalTimeSampler,
    TimeSampler,
    UniformTimeSampler,
    build_time_sampler,
)

__all__ = [
    "LikelihoodResult",
    "log_likelihood",
    "FlowMapFn",
    "FlowMapTarget",
    "MeanFlowObjective",
    "TimePairSampler",
    "adaptive_weight",
    "flow_map_target",
    "AffinePath",
    "PathSample",
    "SCHEDULERS",
    "CondOTScheduler",
    "Scheduler",
    "SchedulerOutput",
    "VPScheduler",
    "build_scheduler",
    "TIME_SAMPLERS",
    "LogitNormalTimeSampler",
    "TimeSampler",
    "UniformTimeSampler",
    "build_time_sampler",
]
