"""Training: the LightningModule, EMA, schedules, callbacks and loggers."""

from latent_flow.training.callbacks import MetricsJSONCallback, SampleGridCallback
from latent_flow.training.ema import EMA
from latent_flow.training.module import BackboneMismatchError, LatentFlowModule

__all__ = ["EMA", "LatentFlowModule", "BackboneMismatchError", "SampleGridCallback", "MetricsJSONCallback"]
