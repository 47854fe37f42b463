"""A folder of the user's own images, optionally split into class sub-folders.

Layouts accepted::

    root/cat/001.png, root/dog/xyz.jpg, ...   -> classes ["cat", "dog"] (sorted names -> labels 0, 1, ...)
    root/001.png, root/002.png, ...           -> a single class 0 (named after the root folder)

Files are found recursively inside each class folder; hidden files and folders (``.name``) are
ignored. Accepted endings (``extensions``, case-insensitive): ``.png .jpg .jpeg .bmp .webp .gif .tif
.tiff`` by default (GIF / multi-page TIFF: the first frame). Other files are left out and reported:
counted in ``ignored_files`` and named in a ``warnings.warn`` (with their endings), like unreadable ones. Every image is converted to RGB (grayscale, palette, 16-bit and CMYK images converted;
transparency composited on white; EXIF orientation applied), resized so that its shorter side is
``resolution`` (bicubic, antialiased) and centre-cropped to ``resolution x resolution`` (or resized
to the square directly with ``center_crop=False``).

At construction, :meth:`ImageFolderDataset.scan` opens the header of every file and skips the
unreadable ones (counted in ``skipped_files``, reported with ``warnings.warn``). A file whose
header is fine but whose pixel data is broken (e.g. truncated) can only be detected when it is
decoded: ``__getitem__`` then raises a ``RuntimeError`` naming the file.

Items: ``{"image": (3, R, R) float in [-1, 1], "label": long (), "index": long ()}`` (no time
variable here; the flow convention t = 0 noise, t = 1 data is applied downstream).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DEFAULT_EXTENSIONS",
    "ImageFolderDataset",
    "list_image_files",
    "load_image",
    "pil_to_tensor",
    "resize_center_crop",
]

DEFAULT_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_NUM_NAMED_SKIPPED = 5  # file names listed in the warning

# Pillow >= 9.1 has Image.Resampling; older versions expose the constant on Image
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = []
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip("."):
            raise ValueError(f"invalid file extension {ext!r}; expected e.g. '.png'")
        ext = ext.lower()
        out.append(ext if ext.startswith(".") else "." + ext)
    if not out:
        raise ValueError("extensions must not be empty")
    return tuple(dict.fromkeys(out))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")  # keeps palette transparency
    elif image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(
    image: Image.Image, resolution: int, center_crop: bool = True, resample: int = _BICUBIC
) -> Image.Image:
    """Resize so the shorter side is ``resolution``, then centre-crop to a square.

    Shared by every image loader; ``resample`` lets segmentation maps use ``Image.NEAREST``. With
    ``center_crop=False`` the whole image is resized to ``resolution x resolution``.
    """
    res = int(resolution)
    width, height = image.size
    if (width, height) == (res, res):
        return image
    if not center_crop:
        return image.resize((res, res), resample)
    scale = res / min(width, height)
    new_w, new_h = max(res, round(width * scale)), max(res, round(height * scale))
    image = image.resize((new_w, new_h), resample)  # Pillow's resize antialiases when shrinking
    left, top = (new_w - res) // 2, (new_h - res) // 2
    return image.crop((left, top, left + res, top + res))


def pil_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    out = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(out)


def list_image_files(path: str | os.PathLike, what: str) -> list[Path]:
    """``path`` itself when it is a file, else the image files of the folder (sorted by name).

    ``what`` names the option in errors (``inputs``, ``images_dir``, ...)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in DEFAULT_EXTENSIONS and p.is_file())
        if not files:
            raise FileNotFoundError(f"{what} folder '{path}' has no image files ({', '.join(DEFAULT_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"{what} '{path}' does not exist")


def load_image(
    path: str | os.PathLike, resolution: int, *, resize: bool = False, what: str = "input image"
) -> np.ndarray:
    """RGB uint8 ``(resolution, resolution, 3)`` of an image file (transparency composited on white).

    ``resize=False`` (inpainting inputs, whose masks are pixel-aligned): a file of another size
    raises a ``ValueError`` naming it. ``resize=True`` (editing a photo): the shorter side is
    resized to ``resolution`` and the centre cropped, as the datasets do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what}: expected an image file)")
    with Image.open(path) as img:
        image = to_rgb(img)
        if resize:
            image = resize_center_crop(image, resolution)
        arr = np.asarray(image, dtype=np.uint8)
    if arr.shape[:2] != (resolution, resolution):
        raise ValueError(
            f"{what} '{path}' is {arr.shape[1]}x{arr.shape[0]}, but the model generates "
            f"{resolution}x{resolution} images; resize or crop it first"
        )
    return arr


class ImageFolderDataset(Dataset):
    """Images from ``root`` (class sub-folders -> labels), square ``resolution`` crops in [-1, 1].

    Args:
        root: folder of images, or of class sub-folders of images.
        resolution: output side in pixels.
        extensions: file name endings to include (case-insensitive).
        center_crop: resize the shorter side to ``resolution`` then centre-crop (default); if
            False, resize the whole image to ``resolution x resolution`` (aspect not kept).

    Attributes: ``class_names``, ``num_classes``, ``samples`` (list of (path, label)),
    ``skipped_files`` (unreadable files, skipped), ``ignored_files`` (non-hidden files left out for
    their extension, reported), ``num_resized`` (readable images whose size is not
    ``resolution x resolution``), ``upscaled_files`` (images smaller than that on the side the resize
    scales, so enlarged and blurred: counted and reported with ``warnings.warn``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        center_crop: bool = True,
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
            raise TypeError(f"resolution must be an int, got {resolution!r}")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.extensions = _normalise_extensions(extensions)
        self.center_crop = bool(center_crop)
        if not self.root.exists():
            raise FileNotFoundError(
                f"image folder '{self.root}' does not exist: expected a folder of images or of class sub-folders"
            )
        if not self.root.is_dir():
            raise NotADirectoryError(
                f"'{self.root}' is not a folder: expected a folder of images or of class sub-folders"
            )
        self.ignored_files: list[Path] = []
        self.class_names, candidates = self._discover()
        self.num_classes = len(self.class_names)
        self.samples: list[tuple[Path, int]] = []
        self.skipped_files: list[Path] = []
        self.num_resized = 0
        self.upscaled_files: list[Path] = []
        self._fingerprint = ""
        self.scan(candidates)

    # ---------------------------------------------------------------- discovery and scan
    def _is_image(self, path: Path) -> bool:
        return path.suffix.lower() in self.extensions and not path.name.startswith(".")

    def _files_under(self, folder: Path, ignored: list[Path] | None = None) -> list[Path]:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if self._is_image(Path(name)):
                    files.append(Path(dirpath) / name)
                elif ignored is not None and not name.startswith("."):
                    ignored.append(Path(dirpath) / name)
        return files

    def _ignored_summary(self) -> str:
        """``"N file(s) ... : a.txt, b.heic (.txt x1, .heic x1)"`` of :attr:`ignored_files`."""
        ignored = self.ignored_files
        names = ", ".join(p.relative_to(self.root).as_posix() for p in ignored[:_NUM_NAMED_SKIPPED])
        more = f" and {len(ignored) - _NUM_NAMED_SKIPPED} more" if len(ignored) > _NUM_NAMED_SKIPPED else ""
        counts: dict[str, int] = {}
        for p in ignored:
            counts[p.suffix.lower() or "(none)"] = counts.get(p.suffix.lower() or "(none)", 0) + 1
        endings = ", ".join(f"{ext} x{n}" for ext, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{names}{more} ({endings})"

    def _no_images_error(self) -> ValueError:
        ignored = ""
        if self.ignored_files:
            ignored = (
                f"; {len(self.ignored_files)} file(s) with other extensions were ignored: {self._ignored_summary()}"
            )
        return ValueError(
            f"no images found in '{self.root}' (looked for files ending in {', '.join(self.extensions)}, "
            f"directly in the folder or in class sub-folders{ignored})"
        )

    def _discover(self) -> tuple[list[str], list[tuple[Path, int]]]:
        """Class folders (or the root) and their image files; fills :attr:`ignored_files` on the way."""
        ignored: list[Path] = []
        self.ignored_files = ignored
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = [(d.name, self._files_under(d, ignored)) for d in subdirs]
        per_class = [(name, files) for name, files in per_class if files]
        top_files = sorted(p for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))
        top_level = [p for p in top_files if self._is_image(p)]
        ignored.extend(p for p in top_files if not self._is_image(p))
        ignored.sort()
        if per_class:
            if top_level:
                warnings.warn(
                    f"ImageFolderDataset: '{self.root}' has class sub-folders and also {len(top_level)} image(s) "
                    "directly inside it; those top-level images are ignored",
                    stacklevel=3,
                )
            names = [name for name, _ in per_class]
            candidates = [(path, label) for label, (_, files) in enumerate(per_class) for path in files]
            return names, candidates
        if not top_level:
            raise self._no_images_error()
        return [self.root.resolve().name or "images"], [(path, 0) for path in top_level]

    def scan(self, candidates: list[tuple[Path, int]] | None = None) -> None:
        """Open each file's header; keep the readable ones, record and report the others.

        Called at construction; calling it again re-scans the folder (e.g. after files changed).
        """
        if candidates is None:
            self.class_names, candidates = self._discover()
            self.num_classes = len(self.class_names)
        samples, skipped, records = [], [], []
        num_resized = 0
        upscaled = []
        for path, label in candidates:
            rel = path.relative_to(self.root).as_posix()
            try:
                stat = path.stat()
            except OSError:
                skipped.append(path)
                records.append((rel, -1, -1, "skipped"))
                continue
            try:
                with Image.open(path) as image:  # reads the header only
                    size = image.size
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
                skipped.append(path)
                records.append((rel, stat.st_size, stat.st_mtime_ns, "skipped"))
                continue
            samples.append((path, label))
            records.append((rel, stat.st_size, stat.st_mtime_ns, label))
            if size != (self.resolution, self.resolution):
                num_resized += 1
                # centre crop: the shorter side is scaled to the resolution; otherwise each side is
                if (min(size) if self.center_crop else min(size[0], size[1])) < self.resolution:
                    upscaled.append((path, size))
        self.samples = samples
        self.skipped_files = skipped
        self.num_resized = num_resized
        self.upscaled_files = [p for p, _ in upscaled]
        if upscaled:
            names = ", ".join(
                f"{p.relative_to(self.root).as_posix()} ({w}x{h})" for p, (w, h) in upscaled[:_NUM_NAMED_SKIPPED]
            )
            more = f" and {len(upscaled) - _NUM_NAMED_SKIPPED} more" if len(upscaled) > _NUM_NAMED_SKIPPED else ""
            warnings.warn(
                f"ImageFolderDataset: {len(upscaled)} of {len(samples)} image(s) in '{self.root}' are smaller than "
                f"{self.resolution}x{self.resolution} and are upscaled (blurred training data): {names}{more}",
                stacklevel=3,
            )
        if self.ignored_files:
            warnings.warn(
                f"ImageFolderDataset: ignored {len(self.ignored_files)} file(s) whose extension is not one of "
                f"{', '.join(self.extensions)} in '{self.root}': {self._ignored_summary()}; "
                "pass data.dataset.extensions=[...] to include them",
                stacklevel=3,
            )
        if skipped:
            names = ", ".join(p.relative_to(self.root).as_posix() for p in skipped[:_NUM_NAMED_SKIPPED])
            more = f" and {len(skipped) - _NUM_NAMED_SKIPPED} more" if len(skipped) > _NUM_NAMED_SKIPPED else ""
            warnings.warn(
                f"ImageFolderDataset: skipped {len(skipped)} unreadable file(s) in '{self.root}': {names}{more}",
                stacklevel=3,
            )
        if not samples:
            raise ValueError(
                f"no readable images in '{self.root}': all {len(skipped)} file(s) ending in "
                f"{', '.join(self.extensions)} failed to open"
            )
        config = {
            "class": type(self).__name__,
            "root": str(self.root.resolve()),
            "files": sorted(records, key=lambda r: r[0]),
            "resolution": self.resolution,
            "center_crop": self.center_crop,
            "class_names": self.class_names,
        }
        self._fingerprint = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def fingerprint(self) -> str:
        """sha1 of the root path, the files (relative path, size, mtime), resolution and crop flag."""
        return self._fingerprint

    # ---------------------------------------------------------------- items
    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', resolution={self.resolution}, {len(self)} images, "
            f"{self.num_classes} classes, {len(self.skipped_files)} skipped, {self.num_resized} resized)"
        )

    def load_image(self, index: int) -> Image.Image:
        """Decode item ``index`` as an RGB ``resolution x resolution`` PIL image."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)
        except Exception as error:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f"failed to decode image file '{path}': {error}") from error
        return self._resize(image)

    def _resize(self, image: Image.Image) -> Image.Image:
        return resize_center_crop(image, self.resolution, self.center_crop)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = operator.index(index)
        if index < 0:
            index += len(self.samples)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self.samples)}")
        return {
            "image": pil_to_tensor(self.load_image(index)),
            "label": torch.tensor(self.samples[index][1], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
