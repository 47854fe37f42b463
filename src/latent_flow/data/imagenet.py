"""ImageNet (ILSVRC-2012) in class folders, with the ADM centre crop.

Layout::

    root/train/n01440764/n01440764_10026.JPEG, ...   (1000 synset folders)
    root/val/n01440764/ILSVRC2012_val_00000293.JPEG  (val sorted into synset folders, e.g. with
                                                      the common ``valprep.sh``; the flat official
                                                      val folder is not supported)

Labels: the synset ids sorted -> 0..999 (the standard torchvision / ADM / DiT order). Images are
cropped with :func:`adm_center_crop` (guided-diffusion's ``center_crop_arr``), the crop used by
ADM, DiT and LFM for ImageNet 256. Unlike :class:`ImageFolderDataset`, the scan does not open
every file's header (1.28M files): files are only listed and stat-ed; a broken file raises a
``RuntimeError`` naming it when it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from PIL import Image

from latent_flow.data.image_folder import ImageFolderDataset

__all__ = ["ImageNetDataset", "adm_center_crop"]

_BOX = getattr(Image, "Resampling", Image).BOX
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


def adm_center_crop(pil_image: Image.Image, resolution: int) -> Image.Image:
    """ADM's ``center_crop_arr`` (openai/guided-diffusion ``image_datasets.py``), returning a PIL image.

    While the shorter side is >= 2 * resolution, halve the image with a BOX filter; then resize
    with BICUBIC so the shorter side equals ``resolution``; then crop the centre square
    (offsets ``(size - resolution) // 2``).
    """
    res = int(resolution)
    while min(*pil_image.size) >= 2 * res:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=_BOX)
    scale = res / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=_BICUBIC)
    width, height = pil_image.size
    left, top = (width - res) // 2, (height - res) // 2
    return pil_image.crop((left, top, left + res, top + res))


class ImageNetDataset(ImageFolderDataset):
    """ImageNet ``root/<split>/<synset>/*.JPEG``; labels = sorted synset ids; ADM crop to ``resolution``.

    Attributes as :class:`ImageFolderDataset` (``class_names`` are the synset ids) plus ``split``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", resolution: int = 256) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split = split
        self.imagenet_root = Path(root).expanduser()
        folder = self.imagenet_root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageNet split folder '{folder}' does not exist: expected {self.imagenet_root}/{split}/<synset id>/*.JPEG "
                "(extract ILSVRC2012_img_train.tar and its per-class tars there; see docs/datasets.md)"
            )
        super().__init__(folder, resolution, center_crop=True)

    def scan(self, candidates=None) -> None:
        """List and stat the files (no header decoding); compute the fingerprint."""
        if candidates is None:
            self.class_names, candidates = self._discover()
            self.num_classes = len(self.class_names)
        samples, records, skipped = [], [], []
        for path, label in candidates:
            rel = path.relative_to(self.root).as_posix()
            try:
                stat = path.stat()
            except OSError:
                skipped.append(path)
                continue
            samples.append((path, label))
            records.append((rel, stat.st_size, stat.st_mtime_ns, label))
        self.samples = samples
        self.skipped_files = skipped
        self.num_resized = len(samples)  # not measured (headers are not read)
        if not samples:
            raise ValueError(f"no readable images in '{self.root}'")
        config = {
            "class": type(self).__name__,
            "root": str(self.root.resolve()),
            "files": sorted(records, key=lambda r: r[0]),
            "resolution": self.resolution,
            "crop": "adm",
            "class_names": self.class_names,
        }
        self._fingerprint = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _resize(self, image: Image.Image) -> Image.Image:
        return adm_center_crop(image, self.resolution)
