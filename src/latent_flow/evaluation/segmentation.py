"""Segmentation scores: the confusion matrix of class-id maps and the mean IoU (mIoU) over classes.

The one place for this maths: the shapes oracle (:mod:`latent_flow.evaluation.oracle`) and the part
segmenter (:mod:`latent_flow.evaluation.segmenter`) both score with it.

* :func:`confusion_matrix`: ``C[t, p]`` = pixels of target class ``t`` predicted as ``p``, summed over
  every pixel of every map given (maps of one data set accumulate into one matrix, so a class is scored
  over the whole set, not per image).
* :func:`miou_from_confusion`: per class ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` (intersection over union
  of the predicted and the target region of class ``c``), averaged over the classes **present**: those
  with a non-empty union, i.e. in the targets or in the predictions. A class in neither has no IoU
  (``None``) and is left out of the mean; a class predicted where the targets have none has IoU 0 and
  counts (its false positives are an error).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["confusion_matrix", "miou", "miou_from_confusion"]


def confusion_matrix(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int) -> Tensor:
    """``(K, K)`` int64 counts, rows = target class, columns = predicted class, over all pixels.

    ``pred`` and ``target``: class-id maps of one shape (any number of maps), ids in ``[0, K)``.
    """
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} maps differ in shape")
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    for name, ids in (("predicted", pred), ("target", target)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
            raise ValueError(
                f"{name} class ids span [{int(ids.min())}, {int(ids.max())}], outside [0, {num_classes - 1}]"
            )
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_from_confusion(confusion: Tensor | np.ndarray) -> tuple[float, list[float | None]]:
    """``(mIoU, per-class IoU)`` of a confusion matrix (rows = target); see the module docstring.

    Per-class entries are ``None`` for classes in neither the targets nor the predictions; the mean is
    over the others (``nan`` when there are none).
    """
    conf = torch.as_tensor(confusion).double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    per_class = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(conf.shape[0])]
    valid = [v for v in per_class if v is not None]
    return (float(np.mean(valid)) if valid else float("nan")), per_class


def miou(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int) -> tuple[float, list[float | None]]:
    """``(mIoU, per-class IoU)`` of predicted against target class-id maps (all pixels of all maps)."""
    return miou_from_confusion(confusion_matrix(pred, target, num_classes))
