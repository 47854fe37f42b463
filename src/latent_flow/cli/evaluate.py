"""Evaluate a checkpoint: ``python -m latent_flow.evaluate ckpt_path=... num_samples=50000 sampler=heun``.

* Sample indices are split across ranks (``i % world_size == rank`` under torchrun / srun), and
  the noise of sample ``i`` is seeded by ``(seed, i)``: any split gives the same images up to
  float rounding (kernels block by batch size).
* Resumable: a sample whose PNG exists is not written again; an interrupted run continues, sampling
  each batch that lacks a PNG again whole, so with the same ``batch_size`` and world size the
  images it adds are bit-identical to those of an uninterrupted run.
* Writes ``images/NNNNNN.png`` (lossless), ``samples.npz`` (``arr_0`` uint8 NHWC + ``labels``,
  the ADM evaluator's layout) and ``metrics.json`` (metrics, NFE, milliseconds per image).
* Metrics: for checkpoints trained on ``shapes``, FD-shapes against real renders (with its floor:
  two independent real sets) and the oracle's label accuracy of class-conditional samples,
  offline; otherwise FID / KID / precision-recall / IS in the feature space of
  ``evaluation.feature_extractor`` (``feature_extractor=inception`` by default: the FID Inception,
  weights from ``evaluation.inception_weights`` or torch hub's checkpoint folder, without them the
  tool stops with the file to download; any ``_target_`` module instead) against
  ``evaluation.reference_stats`` (written by ``python -m latent_flow.reference_stats``) or
  ``evaluation.reference_npz`` (reference images).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from latent_flow.api import load_model
from latent_flow.cli.sample import cfg_interval_of, load_guide, sampling_settings
from latent_flow.conditioning import InpaintCondition
from latent_flow.data import ShapesDataset
from latent_flow.data.image_folder import list_image_files
from latent_flow.evaluation import oracle as oracle_lib  # module attributes: patchable in tests
from latent_flow.evaluation.feature_metrics import ReferenceSet, feature_metrics, scores
from latent_flow.evaluation.metrics import compute_features, metric_names
from latent_flow.evaluation.reference import (
    build_feature_extractor,
    check_reference_data,
    check_reference_extractor,
    extractor_fingerprint,
    load_reference_stats,
    reference_info,
)
from latent_flow.generation import NFETally, sample_batches
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import distributed_rank, rank_device, rank_indices, wait_until
from latent_flow.utils.hashing import file_sha256
from latent_flow.utils.images import save_png
from latent_flow.utils.io import write_json
from latent_flow.utils.progress import progress_bar

__all__ = ["load_image_folder", "rank_indices", "run_evaluation", "sampling_recipe", "score_images"]

log = logging.getLogger(__name__)


def _labels_for(indices: list[int], model, spatial: dict | None = None) -> torch.Tensor | None:
    """Label of sample ``i``: ``i % num_classes``; for spatial + label models the label of the
    held-out render whose map / known region conditions sample ``i`` (never a contradiction;
    the sampling loop takes it from the same inputs)."""
    if not model.condition.uses_label:
        return None
    if spatial is not None:
        return torch.as_tensor(np.asarray(spatial["labels"]), dtype=torch.long)
    return torch.tensor([i % model.num_classes for i in indices], dtype=torch.long)


def _load_pngs(image_dir: Path, num_samples: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(image_dir / f"{i:06d}.png").convert("RGB")) for i in range(num_samples)])


def _data_info(cfg: DictConfig, model) -> dict:
    """The training data's name / resolution, from the checkpoint (or the run's config.yaml)."""
    data = model.hparams.get("data") or {}
    run_config = Path(cfg.ckpt_path).resolve().parent.parent / "config.yaml"
    if not data and run_config.exists():  # checkpoints written before the data was recorded in them
        data = dict(OmegaConf.load(run_config).get("data", {}))
    return data


def _spatial_inputs(cfg: DictConfig, model):
    """What an inpainting / semantic model is asked for sample ``i``: held-out shapes render ``i``.

    Returns ``inputs(indices) -> {"images", "maps"[, "masks"]}`` (``None`` for models without
    spatial condition): renders of ``evaluation.condition_seed`` (never trained on), their
    semantic maps, and for inpainting mask ``i`` of the model's training mask generator (variant
    ``evaluation.mask_variant``).
    """
    condition = model.condition
    if not condition.spatial_channels:
        return None
    if _data_info(cfg, model).get("name") != "shapes":
        raise ValueError(
            "evaluate draws the conditions of inpainting / semantic models from held-out `shapes` renders; "
            "for a model of other data sample its inputs with python -m latent_flow.sample inputs=... masks=... "
            "(or semantic=...) and score the written images"
        )

    data = ShapesDataset(
        num_samples=cfg.num_samples, resolution=int(condition.resolution), seed=int(cfg.evaluation.condition_seed)
    )
    masks = condition.mask_generator() if isinstance(condition, InpaintCondition) else None
    variant = int(cfg.evaluation.mask_variant)

    def inputs(indices: list[int]) -> dict[str, np.ndarray]:
        renders = [data.render(i) for i in indices]
        out = {
            "images": np.stack([r[0] for r in renders]),
            "maps": np.stack([r[2] for r in renders]),
            "labels": np.asarray([r[1]["shape"] for r in renders], dtype=np.int64),
        }  # the data's label
        if masks is not None:
            out["masks"] = np.stack([masks(i, variant) for i in indices])
        return out

    return inputs


def _batches_to_redo(indices: list[int], image_dir: Path, batch_size: int) -> list[int]:
    """The indices of every batch (``batch_size`` consecutive entries of this rank's ``indices``) that
    lacks one of its PNGs: a batch is sampled again whole, so a resumed run computes each image in the
    same batch as a run that was never interrupted, and rewrites only the missing ones bit for bit
    (CPU and GPU kernels pick their blocking by the batch size; another batch gives the same image
    only up to float rounding)."""
    todo = []
    for lo in range(0, len(indices), batch_size):
        batch = indices[lo : lo + batch_size]
        if not all((image_dir / f"{i:06d}.png").exists() for i in batch):
            todo.extend(batch)
    return todo


def _generate(cfg: DictConfig, model, image_dir: Path, rank: int, world_size: int) -> dict:
    """This rank's missing samples, through the one sampling loop (:func:`latent_flow.generation.sample_batches`):
    the batches that lack a PNG are sampled again whole, and only the missing PNGs are written."""
    todo = _batches_to_redo(rank_indices(cfg.num_samples, rank, world_size), image_dir, int(cfg.batch_size))
    spatial_inputs = _spatial_inputs(cfg, model)  # inpainting / semantic: the condition (and label) of each index
    labels = None if spatial_inputs is not None else _labels_for(todo, model)
    tally = NFETally()
    bar = progress_bar(len(todo), f"[rank {rank}/{world_size}] sampling", unit="img", disable=not todo)
    for batch in sample_batches(
        model,
        todo,
        sampler=to_plain(cfg.sampler),
        batch_size=int(cfg.batch_size),
        labels=labels,
        spatial=spatial_inputs,
        cfg_scale=float(cfg.cfg_scale),
        cfg_interval=cfg_interval_of(cfg),
        seed=int(cfg.seed),
        use_ema=bool(cfg.use_ema),
        guide=load_guide(cfg, model),
    ):
        tally.add(batch)
        for index, img in zip(batch.indices, batch.images):
            path = image_dir / f"{index:06d}.png"
            if not path.exists():
                save_png(img, path)
        bar.update(len(batch.indices))
    bar.close()
    return {
        "generated": len(todo),  # sampled (whole batches), the count the seconds are for
        "seconds": tally.seconds,
        "nfe": tally.nfe,
        "refiner_nfe": tally.refiner_nfe,
        "guide_nfe": tally.guide_nfe,
        "model_rows": tally.model_rows,
    }


def _per_sample(timings: list[dict], key: str):
    """The per-sample value of ``key`` over the ranks' timing records: one value, or the distinct
    values of the batches (adaptive solvers); None when no record has it."""
    values = sorted({v for t in timings for v in t.get(key, [])})
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _flowturbo_nfe(cfg: DictConfig, timings: list[dict]) -> dict:
    """sampler=flowturbo: base-model and refiner NFE per sample, reported apart."""
    if cfg.sampler.name != "flowturbo":
        return {}
    return {
        "base_nfe_per_sample": _per_sample(timings, "nfe"),
        "refiner_nfe_per_sample": _per_sample(timings, "refiner_nfe"),
    }


def _model_rows(timings: list[dict]) -> dict:
    """``model_rows_per_sample``: network rows per generated sample (NFE under CFG counts each guided
    evaluation twice, the guidance interval less, autoguidance adds the guide's rows)."""
    rows = _per_sample(timings, "model_rows")
    return {} if rows is None else {"model_rows_per_sample": rows}


def _guide_nfe(recipe: dict, timings: list[dict]) -> dict:
    """Autoguidance: the guide's evaluations per sample (a value, or the distinct values of the batches)."""
    if not recipe.get("guide_ckpt_path"):
        return {}
    return {"guide_nfe_per_sample": _per_sample(timings, "guide_nfe")}


def _wait_for_all(image_dir: Path, num_samples: int, timeout: float) -> None:
    missing = lambda: [i for i in range(num_samples) if not (image_dir / f"{i:06d}.png").exists()]  # noqa: E731
    wait_until(
        lambda: not missing(),
        lambda: f"samples still missing after waiting for the other ranks: {missing()[:10]} ...",
        timeout=timeout,
        poll=5.0,
        progress=lambda: len(missing()),
    )


def _metrics(
    cfg: DictConfig, model, arr: np.ndarray, labels: np.ndarray | None, spatial: dict | None, *, extractor=None
) -> dict:
    requested = _requested_metrics(cfg, _data_info(cfg, model), spatial=spatial is not None)
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    out: dict = {}
    shapes_metrics = {"fd_shapes", "label_accuracy", "miou"} & set(requested)
    if shapes_metrics:
        resolution = arr.shape[1]
        oracle = oracle_lib.load_or_train_oracle(cfg.paths.cache_dir, resolution, **to_plain(cfg.evaluation.oracle))
        if "fd_shapes" in requested:
            n_ref = cfg.evaluation.reference_samples or len(arr)
            out["fd_shapes"] = oracle_lib.fd_shapes(
                oracle, images, oracle_lib.real_images(n_ref, resolution, cfg.evaluation.reference_seed)
            )
            # the floor at the score's own set sizes (samples, real renders): FD's bias depends on both
            out["fd_shapes_floor"] = oracle_lib.fd_shapes_floor(
                oracle, n=len(arr), resolution=resolution, n_reference=n_ref
            )
            out["fd_shapes_sizes"] = {"samples": len(arr), "reference": int(n_ref)}
        if "label_accuracy" in requested and labels is not None:
            out["label_accuracy"] = oracle_lib.oracle_metrics_on_samples(
                oracle, images, labels=torch.from_numpy(labels)
            )["label_accuracy"]
        if "miou" in requested:
            if spatial is None:
                raise ValueError("metrics: miou needs an inpainting / semantic model (the requested maps)")
            # semantic: against the requested maps; inpainting: against the maps of the original renders
            seg = oracle_lib.oracle_metrics_on_samples(oracle, images, semantic=torch.from_numpy(spatial["maps"]))
            out["miou"], out["miou_per_class"] = seg["miou"], seg["miou_per_class"]
        if spatial is not None and "masks" in spatial:
            known = spatial["masks"]
            out["known_region_bit_exact"] = bool(np.array_equal(arr[known], spatial["images"][known]))
            out["hole_ratio"] = float(1.0 - known.mean())
        out["oracle_held_out"] = getattr(oracle, "metrics", None)
    inception = [m for m in requested if m in {"fid", "kid", "precision_recall", "is"}]
    if inception:
        out.update(_feature_metrics(cfg, arr, tuple(inception), extractor=extractor))
    return out


# ---------------------------------------------------------------- checks before the first sample
FEATURE_METRICS = ("fid", "kid", "precision_recall", "is")
METRICS = ("fd_shapes", "label_accuracy", "miou", *FEATURE_METRICS)


def _requested_metrics(cfg: DictConfig, data: dict, *, spatial: bool) -> list[str]:
    """``metrics=`` (``auto``: the shapes oracle's for shapes checkpoints, FID & co otherwise); unknown names raise."""
    if cfg.metrics != "auto":
        requested = [str(m) for m in cfg.metrics]
    elif data.get("name") == "shapes":
        requested = ["fd_shapes", "label_accuracy"] + (["miou"] if spatial else [])
    else:
        requested = list(FEATURE_METRICS) + (["miou"] if spatial else [])
    unknown = set(requested) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; valid: {', '.join(METRICS)}")
    return requested


def _feature_extractor(cfg: DictConfig):
    """``evaluation.feature_extractor`` built, on the scoring device."""
    extractor = build_feature_extractor(to_plain(cfg.evaluation.feature_extractor))
    if isinstance(extractor, torch.nn.Module):
        extractor.to(_score_device(cfg))
    return extractor


def _score_device(cfg: DictConfig) -> str:
    return "cuda" if torch.cuda.is_available() and str(cfg.device) in ("auto", "cuda") else "cpu"


def _npz_image_shape(path: str | Path) -> tuple[int, ...]:
    """Shape of ``arr_0`` of a reference ``.npz``, read from its header (the images are not loaded)."""
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)
    return tuple(shape)


def _check_reference(cfg: DictConfig, extractor, metrics, *, data: str | None, resolution: int | None) -> list[str]:
    """The reference of ``metrics`` exists, was computed with this extractor (config and weights) and is of
    the evaluated data and resolution (:func:`~latent_flow.evaluation.reference.check_reference_data`;
    ``evaluation.allow_reference_mismatch=true`` scores against other data anyway). Returns the differences
    allowed that way."""
    ev = cfg.evaluation
    if ev.get("reference_stats") is None and ev.get("reference_npz") is None:
        raise ValueError(
            f"metrics {list(metrics)} need a reference: evaluation.reference_stats=<dir written by "
            "`python -m latent_flow.reference_stats data=... split=train`> or evaluation.reference_npz=/path/to/"
            "reference.npz (arr_0: uint8 NHWC); offline on shapes, metrics=[fd_shapes,label_accuracy]"
        )
    allow = bool(ev.get("allow_reference_mismatch", False))
    if ev.get("reference_stats") is not None:
        info = reference_info(ev.reference_stats)
        check_reference_extractor(
            ev.reference_stats,
            info,
            feature_extractor=to_plain(ev.feature_extractor),
            extractor_weights=extractor_fingerprint(extractor),
        )
        return check_reference_data(ev.reference_stats, info, data=data, resolution=resolution, allow_mismatch=allow)
    shape = _npz_image_shape(ev.reference_npz)
    return check_reference_data(ev.reference_npz, {"resolution": shape[1]}, resolution=resolution, allow_mismatch=allow)


def _check_before_sampling(cfg: DictConfig, model):
    """Everything that can refuse the scores, checked before the first sample is drawn (not after hours of
    sampling): the metric names, a reference for FID & co, its feature extractor and weights, its data and
    resolution against the model's. Returns the feature extractor (built once, reused for scoring), or None."""
    data = _data_info(cfg, model)
    spatial = bool(model.condition.spatial_channels)
    requested = _requested_metrics(cfg, data, spatial=spatial)
    if "miou" in requested and not spatial:
        raise ValueError("metrics: miou needs an inpainting / semantic model (the requested maps)")
    features = [m for m in requested if m in FEATURE_METRICS]
    if not features:
        return None
    extractor = _feature_extractor(cfg)
    resolution = data.get("resolution")
    _check_reference(cfg, extractor, features, data=data.get("name"), resolution=resolution)
    return extractor


def _feature_metrics(cfg: DictConfig, arr: np.ndarray, metrics: tuple[str, ...], *, extractor=None) -> dict:
    """FID & co in the configured extractor's feature space (``evaluation.feature_extractor``; ``extractor``
    when already built) against ``evaluation.reference_stats`` (from ``latent_flow.reference_stats``) or
    ``evaluation.reference_npz`` (images), checked (:func:`_check_reference`) before any feature is computed."""
    ev = cfg.evaluation
    spec = to_plain(ev.feature_extractor)
    extractor = _feature_extractor(cfg) if extractor is None else extractor
    mismatch = _check_reference(cfg, extractor, metrics, data=None, resolution=int(arr.shape[1]))
    device = _score_device(cfg)
    fake_f, fake_logits = compute_features(extractor, arr, device=device)
    out: dict = {"feature_extractor": spec.get("_target_")}
    if mismatch:
        out["reference_mismatch"] = mismatch
    if ev.get("reference_stats") is not None:
        ref = load_reference_stats(
            ev.reference_stats, feature_extractor=spec, extractor_weights=extractor_fingerprint(extractor)
        )
        info = ref["info"]
        split = (
            info.get("dataset_split") if info.get("split") == "all" and info.get("dataset_split") else info.get("split")
        )
        reference = ReferenceSet.from_stats(ref, name=" ".join(str(v) for v in (info.get("data"), split) if v))
        if ref["features"] is not None:
            out["reference"] = {k: info.get(k) for k in ("data", "split", "num_images")}
            out["reference_name"] = reference.name  # e.g. "emoji val"
    else:
        real_f, _ = compute_features(extractor, np.load(ev.reference_npz)["arr_0"], device=device)
        reference = ReferenceSet.from_features(real_f, name=Path(ev.reference_npz).name)
        out["reference_name"] = reference.name
    # the torchmetrics path of the training callback (one process here: rank 0 holds every sample)
    collection = feature_metrics(metrics, reference, has_logits=fake_logits is not None)
    collection.update(fake_f, torch.arange(len(fake_f)), fake_logits)
    out["num_samples"], out["num_reference"] = len(fake_f), reference.num_images
    out.update(scores(collection))
    return out


RECIPE_FILE = "recipe.json"
DEFAULT_NUM_SAMPLES = {"shapes": 1000}  # shapes: what its FD floor needs; every other dataset: FID-50k
PAPER_NUM_SAMPLES = 50000


def _resolve_num_samples(cfg: DictConfig, model) -> None:
    """``num_samples=auto``: 50k (the field's FID-50k) except where a dataset states its own count."""
    if str(cfg.num_samples) == "auto":
        with open_dict(cfg):
            cfg.num_samples = DEFAULT_NUM_SAMPLES.get(_data_info(cfg, model).get("name"), PAPER_NUM_SAMPLES)
    if int(cfg.num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1 (or auto), got {cfg.num_samples}")


def sampling_recipe(cfg: DictConfig) -> dict:
    """Everything that determines the samples in ``out_dir`` (a resumed run must match it)."""
    recipe = {**sampling_settings(cfg), "checkpoint_sha256": file_sha256(cfg.ckpt_path), "precision": "float32"}
    if recipe["guide_ckpt_path"]:  # autoguidance: the guide's weights are part of the recipe
        recipe["guide_sha256"] = file_sha256(recipe["guide_ckpt_path"])
    for key in ("condition_seed", "mask_variant"):
        recipe[key] = cfg.evaluation.get(key)
    return recipe


def _check_resume(out_dir: Path, recipe: dict, overwrite: bool) -> None:
    """Refuse to mix samples of two recipes in one folder; ``overwrite=true`` starts over.

    The checkpoint's hash (not its path) and the sampling settings must match; ``num_samples``
    may grow (sample ``i`` depends only on ``(seed, i)``)."""
    path = out_dir / RECIPE_FILE
    image_dir = out_dir / "images"
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        differ = sorted(
            k
            for k in set(old) | set(recipe)
            if k not in ("ckpt_path", "guide_ckpt_path", "num_samples") and old.get(k) != recipe.get(k)
        )
        if differ:
            details = "; ".join(f"{k}: {old.get(k)!r} there, {recipe.get(k)!r} now" for k in differ)
            raise ValueError(
                f"{out_dir} holds samples of another setting ({details}). Use another out_dir, or overwrite=true "
                "to delete them and start over"
            )
    elif overwrite and image_dir.exists():
        shutil.rmtree(image_dir)
        for stale in list(out_dir.glob("timing_rank*.json")) + [out_dir / "metrics.json", out_dir / "samples.npz"]:
            stale.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, recipe)


def load_image_folder(folder: str | Path, *, strict: bool = False, skipped: list[str] | None = None) -> np.ndarray:
    """Every image file of ``folder`` (sorted by name) as uint8 NHWC RGB; all must share one size.

    A file that cannot be decoded is skipped, appended to ``skipped`` (``"name: reason"``) and reported
    with a warning, as training does; ``strict=True`` refuses the folder instead, listing every such file.
    """
    files = list_image_files(folder, "images_dir")
    arrays, bad = [], []
    for f in files:
        try:
            with Image.open(f) as img:
                arr = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            bad.append(f"{f.name}: {type(exc).__name__}: {exc}")
            continue
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(
                f"{f} is {arr.shape[1]}x{arr.shape[0]} but {files[0]} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: images_dir must hold one image size"
            )
        arrays.append(arr)
    if bad and (strict or not arrays):
        why = "images_strict=true" if strict else "no file could be read"
        raise ValueError(
            f"{len(bad)} of {len(files)} file(s) in {folder} cannot be read ({why}):\n  " + "\n  ".join(bad)
        )
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(
            f"images_dir={folder}: skipped {len(bad)} unreadable file(s) of {len(files)} (scored {len(arrays)}): "
            f"{shown}; images_strict=true refuses the folder instead",
            stacklevel=2,
        )
        if skipped is not None:
            skipped.extend(bad)
    return np.stack(arrays)


def score_images(cfg: DictConfig) -> dict:
    """``images_dir=``: FID & co of an existing folder of images (no checkpoint, no sampling)."""
    if cfg.metrics == "auto":
        requested = ("fid", "kid", "precision_recall", "is")
    else:
        requested = tuple(cfg.metrics)
    bad = set(requested) - {"fid", "kid", "precision_recall", "is"}
    if bad:
        raise ValueError(f"images_dir= scores feature metrics only (fid, kid, precision_recall, is), not {sorted(bad)}")
    skipped: list[str] = []
    arr = load_image_folder(cfg.images_dir, strict=bool(cfg.get("images_strict", False)), skipped=skipped)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "images_dir": str(cfg.images_dir),
        "num_samples": len(arr),
        "skipped_files": skipped,
        "metrics": _feature_metrics(cfg, arr, requested),
    }
    write_json(out_dir / "metrics.json", summary)
    print(json.dumps(summary["metrics"], indent=2, default=str))
    return summary


def run_evaluation(cfg: DictConfig) -> dict | None:
    if cfg.get("images_dir"):
        if cfg.get("ckpt_path"):
            raise ValueError("give ckpt_path= (sample and score a model) or images_dir= (score a folder), not both")
        return score_images(cfg)
    if not cfg.get("ckpt_path"):
        raise ValueError("evaluate needs ckpt_path=<flow checkpoint> (or images_dir=<folder of images> to score)")
    rank, world_size = distributed_rank()
    model = load_model(cfg.ckpt_path, device=rank_device(cfg.device, rank))
    _resolve_num_samples(cfg, model)
    extractor = _check_before_sampling(cfg, model)  # metric names, reference, extractor, data: before any sample
    out_dir = Path(cfg.out_dir)
    image_dir = out_dir / "images"
    recipe = sampling_recipe(cfg)
    if rank == 0:
        _check_resume(out_dir, recipe, bool(cfg.get("overwrite", False)))
    gen = _generate(cfg, model, image_dir, rank, world_size)
    timing_path = out_dir / f"timing_rank{rank}.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"images": 0, "seconds": 0.0, "nfe": []}
    timing = {
        "images": timing["images"] + gen["generated"],
        "seconds": timing["seconds"] + gen["seconds"],
        "nfe": sorted(set(timing["nfe"]) | set(gen["nfe"])),
        "refiner_nfe": sorted(set(timing.get("refiner_nfe", [])) | set(gen["refiner_nfe"])),
        "guide_nfe": sorted(set(timing.get("guide_nfe", [])) | set(gen["guide_nfe"])),
        "model_rows": sorted(set(timing.get("model_rows", [])) | set(gen["model_rows"])),
    }
    write_json(timing_path, timing)
    if rank != 0:
        return None
    _wait_for_all(image_dir, cfg.num_samples, cfg.wait_timeout)
    arr = _load_pngs(image_dir, cfg.num_samples)
    indices = list(range(cfg.num_samples))
    spatial_inputs = _spatial_inputs(cfg, model)
    spatial = spatial_inputs(indices) if spatial_inputs is not None else None
    label_t = _labels_for(indices, model, spatial)
    labels = None if label_t is None else label_t.numpy()
    if cfg.save_npz:
        np.savez(out_dir / "samples.npz", arr, labels=labels if labels is not None else np.zeros(0, dtype=np.int64))
    timings = [json.loads(p.read_text()) for p in sorted(out_dir.glob("timing_rank*.json"))]
    images_timed = sum(t["images"] for t in timings)
    seconds = sum(t["seconds"] for t in timings)
    summary = {
        **recipe,
        "nfe_per_sample": _per_sample(timings, "nfe"),
        **_flowturbo_nfe(cfg, timings),
        **_guide_nfe(recipe, timings),
        **_model_rows(timings),
        "ms_per_image": round(1000 * seconds / images_timed, 3) if images_timed else None,
        "world_size": world_size,
        "metrics": _metrics(cfg, model, arr, labels, spatial, extractor=extractor),
    }
    if "num_reference" in summary["metrics"]:  # FID-N: each score with both counts
        m = summary["metrics"]
        summary["reported"] = metric_names(
            m, num_samples=len(arr), num_reference=m["num_reference"], reference=m.get("reference_name")
        )
    write_json(out_dir / "metrics.json", summary)
    print(json.dumps(summary["metrics"], indent=2, default=str))
    return summary
