"""CelebAMask-HQ: CelebA-HQ faces with 19-class semantic maps (semantic-to-image in LFM).

Layout of the official release (https://github.com/switchablenorms/CelebAMask-HQ)::

    root/CelebA-HQ-img/0.jpg ... 29999.jpg                           (1024 x 1024)
    root/CelebAMask-HQ-mask-anno/0/00000_skin.png, 00000_hair.png ...  (512 x 512, one binary
    root/CelebAMask-HQ-mask-anno/1/02000_skin.png ...                  mask per face part; folder
                                                                       = index // 2000)

Part masks are combined as in the official ``face_parsing/Data_preprocessing/g_mask.py``:
start from background 0, then for each part in :data:`PART_NAMES` order set the pixels where the
part mask is non-zero to ``part index + 1`` (later parts overwrite earlier ones; a missing part
file is skipped). Alternatively ``mask_dir`` names a folder of pre-combined index maps
``{i}.png`` (pixel value = class id in 0..18, e.g. the output of ``g_mask.py``,
``CelebAMaskHQ-mask/``).

The image is resized (bicubic) and the map (nearest neighbour) so that the shorter side is
``resolution``, then both are centre-cropped. Items: ``{"image": (3, R, R) float in [-1, 1],
"label": long () = 0, "index": long (), "semantic": (R, R) long in 0..18}``.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from latent_flow.data.image_folder import pil_to_tensor, resize_center_crop, to_rgb

__all__ = ["CelebAMaskHQDataset", "PART_NAMES", "SEMANTIC_CLASSES"]

# Official order: label_list of face_parsing/Data_preprocessing/g_mask.py in
# switchablenorms/CelebAMask-HQ (class id = position + 1; 0 = background).
PART_NAMES: tuple[str, ...] = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
SEMANTIC_CLASSES: tuple[str, ...] = ("background", *PART_NAMES)

_NEAREST = getattr(Image, "Resampling", Image).NEAREST
_PART_FILE = re.compile(r"^(\d+)_(" + "|".join(PART_NAMES) + r")\.png$")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _binary(path: Path) -> np.ndarray:
    """Part mask -> bool (H, W): non-zero pixels (cv2.imread(...)[:, :, 0] != 0 in g_mask.py)."""
    with Image.open(path) as mask:
        array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., 0]
    return array != 0


class CelebAMaskHQDataset(Dataset):
    """CelebA-HQ images + 19-class semantic maps (see the module docstring).

    Args:
        root: the unzipped ``CelebAMask-HQ`` folder.
        resolution: output side in pixels.
        mask_dir: folder of pre-combined ``{i}.png`` index maps (relative to ``root`` or
            absolute); ``None`` combines the per-part masks of ``anno_dir``.
        image_dir / anno_dir: sub-folder names of the images and of the per-part masks.
    """

    semantic_classes: list[str] = list(SEMANTIC_CLASSES)
    num_semantic_classes: int = len(SEMANTIC_CLASSES)

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int = 256,
        mask_dir: str | os.PathLike | None = None,
        image_dir: str = "CelebA-HQ-img",
        anno_dir: str = "CelebAMask-HQ-mask-anno",
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = int(resolution)
        self.root = Path(root).expanduser()
        hint = (
            "download CelebAMask-HQ.zip from https://github.com/switchablenorms/CelebAMask-HQ and unzip it "
            "(see docs/datasets.md), then pass data.dataset.root=<...>/CelebAMask-HQ"
        )
        if not self.root.is_dir():
            raise FileNotFoundError(f"CelebAMask-HQ folder '{self.root}' does not exist: {hint}")
        self.image_dir = self.root / image_dir
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"CelebAMask-HQ image folder '{self.image_dir}' does not exist: {hint}")
        images = {}
        for entry in os.scandir(self.image_dir):
            stem, ext = os.path.splitext(entry.name)
            if stem.isdigit() and ext.lower() in _IMAGE_EXTENSIONS and entry.is_file():
                images[int(stem)] = Path(entry.path)
        if not images:
            raise ValueError(f"no images named <index>.jpg in '{self.image_dir}'")
        self.ids: list[int] = sorted(images)
        self.image_files = [images[i] for i in self.ids]

        self.mask_dir: Path | None = None
        self.mask_files: list[Path] | None = None
        self.part_files: list[list[tuple[int, Path]]] | None = None
        if mask_dir is not None:
            folder = Path(mask_dir).expanduser()
            self.mask_dir = folder if folder.is_absolute() else self.root / folder
            if not self.mask_dir.is_dir():
                raise FileNotFoundError(f"pre-combined mask folder '{self.mask_dir}' does not exist")
            files = [self.mask_dir / f"{i}.png" for i in self.ids]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) have no pre-combined mask in '{self.mask_dir}': "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )
            self.mask_files = files
        else:
            anno = self.root / anno_dir
            if not anno.is_dir():
                raise FileNotFoundError(
                    f"CelebAMask-HQ part-mask folder '{anno}' does not exist: {hint} "
                    "(or pass mask_dir=<folder of pre-combined {i}.png maps>)"
                )
            parts: dict[int, list[tuple[int, Path]]] = {}
            for dirpath, dirnames, filenames in os.walk(anno):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    match = _PART_FILE.match(name)
                    if match:
                        parts.setdefault(int(match.group(1)), []).append(
                            (PART_NAMES.index(match.group(2)) + 1, Path(dirpath) / name)
                        )
            self.part_files = [sorted(parts.get(i, [])) for i in self.ids]
            self.num_without_masks = sum(not p for p in self.part_files)

        self.class_names = ["celebamask_hq"]
        self.num_classes = 1
        self._fingerprint = self._compute_fingerprint()

    # ---------------------------------------------------------------- fingerprint
    def _compute_fingerprint(self) -> str:
        def record(path: Path) -> tuple[str, int, int]:
            stat = path.stat()
            return (path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path),
                    stat.st_size, stat.st_mtime_ns)  # fmt: skip

        masks = self.mask_files if self.mask_files is not None else [p for parts in self.part_files for _, p in parts]
        config = {
            "class": type(self).__name__,
            "root": str(self.root.resolve()),
            "images": [record(p) for p in self.image_files],
            "masks": [record(p) for p in masks],
            "mask_mode": "combined" if self.mask_dir is not None else "parts",
            "resolution": self.resolution,
        }
        return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def fingerprint(self) -> str:
        """sha1 of the image and mask files (path, size, mtime), the mask mode and the resolution."""
        return self._fingerprint

    # ---------------------------------------------------------------- items
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        mode = f"mask_dir='{self.mask_dir}'" if self.mask_dir is not None else "part masks"
        return f"{type(self).__name__}(root='{self.root}', resolution={self.resolution}, {len(self)} images, {mode})"

    def load_semantic_full(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """The (H, W) uint8 class map of item ``index`` at the masks' own resolution."""
        if self.mask_files is not None:
            path = self.mask_files[index]
            with Image.open(path) as mask:
                array = np.asarray(mask)
            if array.ndim == 3:
                array = array[..., 0]
            ids = np.unique(array)
            bad = ids[(ids < 0) | (ids >= len(SEMANTIC_CLASSES))]
            if bad.size:
                raise ValueError(
                    f"pre-combined mask '{path}' has unknown class id(s) {bad.tolist()}; "
                    f"expected ids 0..{len(SEMANTIC_CLASSES) - 1} ({', '.join(SEMANTIC_CLASSES)})"
                )
            return array.astype(np.uint8)
        parts = self.part_files[index]
        if not parts:
            return np.zeros((size[1], size[0]), dtype=np.uint8)  # no annotation: all background
        combined = None
        for class_id, path in parts:  # sorted by class id: the official order, later overwrite earlier
            mask = _binary(path)
            if combined is None:
                combined = np.zeros(mask.shape, dtype=np.uint8)
            if mask.shape != combined.shape:
                raise ValueError(f"part mask '{path}' is {mask.shape}, the other masks of this face {combined.shape}")
            combined[mask] = class_id
        return combined

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = operator.index(index)
        if index < 0:
            index += len(self.ids)
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self.ids)}")
        path = self.image_files[index]
        try:
            with Image.open(path) as image:
                image.load()
                image = to_rgb(ImageOps.exif_transpose(image))
        except Exception as error:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f"failed to decode image file '{path}': {error}") from error
        semantic = self.load_semantic_full(index, image.size)
        image = resize_center_crop(image, self.resolution)
        semantic = resize_center_crop(Image.fromarray(semantic), self.resolution, resample=_NEAREST)
        return {
            "image": pil_to_tensor(image),
            "label": torch.tensor(0, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
            "semantic": torch.from_numpy(np.asarray(semantic, dtype=np.int64).copy()),
        }
