"""Evaluation: Frechet distance maths, FID / KID / precision-recall / IS as torchmetrics Metrics, the shapes
oracle (FD-shapes, accuracy, mIoU) and the memorisation check."""

from latent_flow.evaluation.feature_metrics import (
    FID,
    KID,
    InceptionScore,
    PrecisionRecall,
    ReferenceSet,
    feature_metrics,
    image_metrics,
)
from latent_flow.evaluation.frechet import RunningStats, frechet_distance, gaussian_stats
from latent_flow.evaluation.memorisation import closest_pairs_grid, memorisation_report, nearest_neighbours
from latent_flow.evaluation.oracle import (
    OracleConfig,
    ShapesOracle,
    evaluate_oracle,
    fd_shapes,
    fd_shapes_floor,
    load_or_train_oracle,
    oracle_metrics_on_samples,
    train_oracle,
)

__all__ = [
    "FID",
    "KID",
    "PrecisionRecall",
    "InceptionScore",
    "ReferenceSet",
    "feature_metrics",
    "image_metrics",
    "RunningStats",
    "frechet_distance",
    "gaussian_stats",
    "OracleConfig",
    "ShapesOracle",
    "train_oracle",
    "load_or_train_oracle",
    "evaluate_oracle",
    "oracle_metrics_on_samples",
    "fd_shapes",
    "fd_shapes_floor",
    "nearest_neighbours",
    "memorisation_report",
    "closest_pairs_grid",
]
