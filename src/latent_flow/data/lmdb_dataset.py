"""Images stored in an LMDB database (LSUN, and index-keyed CelebA-HQ / FFHQ exports).

Two layouts are supported (``layout=``):

``"lsun"`` - the official LSUN release (``fyu/lsun``, e.g. ``church_outdoor_train_lmdb/``):
    keys are the image ids (ASCII hex strings), values the encoded image bytes (WebP in the
    official release; JPEG / PNG work too). There is no length key: the number of images is
    ``env.stat()["entries"]``. The key list is read once with a cursor and cached in
    ``<path>/latent_flow_keys.txt`` (or, when that folder is read-only, in
    ``<cache_dir or ~/.cache/latent_flow/lmdb_keys>/<sha1 of the path>.txt``); the cache is
    reused while the database's entry count, ``data.mdb`` size and mtime are unchanged.

``"keyed"`` - one entry per image under the key ``key_format.format(index=i)`` for
    ``i = 0 .. length-1``. The length is the integer stored under the key ``length`` when present
    (rosinality's ``stylegan2-pytorch/prepare_data.py`` exports, used for FFHQ / CelebA-HQ:
    ``key_format="256-{index:05d}"``), otherwise ``env.stat()["entries"]`` (NVAE / DDGAN / LFM
    exports: ``key_format="{index}"``, the default). Values are encoded image bytes (JPEG, PNG,
    WebP); with ``raw_rgb=True`` they are raw ``uint8`` RGB pixels of a square image
    (``side * side * 3`` bytes, NVAE's ``is_encoded=False`` format).

The database is opened lazily in the worker process that first reads an item (read-only,
``lock=False``, ``readahead=False``), so the dataset is safe to use with forked / spawned
DataLoader workers. Every image is converted to RGB, its shorter side resized to ``resolution``
(bicubic, antialiased) and centre-cropped (:func:`resize_center_crop`, the same geometry as
:class:`~latent_flow.data.ImageFolderDataset`). Items: ``{"image": (3, R, R) float in [-1, 1],
"label": long () = 0, "index": long ()}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from latent_flow.data.image_folder import pil_to_tensor, resize_center_crop, to_rgb

__all__ = ["LMDBImageDataset"]

LAYOUTS = ("lsun", "keyed")
KEY_CACHE_NAME = "latent_flow_keys.txt"
_KEY_CACHE_VERSION = 1
# resolved path -> (process id, lmdb.Environment): one read-only handle per database and process
_ENVS: dict[str, tuple[int, object]] = {}


def _check_resolution(resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise TypeError(f"resolution must be an int, got {resolution!r}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    return int(resolution)


def _import_lmdb():
    try:
        import lmdb
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("LMDBImageDataset needs the 'lmdb' package: pip install lmdb") from error
    return lmdb


class LMDBImageDataset(Dataset):
    """Images from an LMDB database, square ``resolution`` crops in [-1, 1] (see the module docstring).

    Args:
        path: the LMDB folder (holding ``data.mdb``) or a single LMDB file.
        resolution: output side in pixels.
        layout: ``"lsun"`` (keys are image ids) or ``"keyed"`` (keys from ``key_format``).
        center_crop: resize the shorter side then centre-crop (default), or squash to the square.
        key_format: ``"keyed"`` layout only: ``str.format`` pattern with the field ``index``
            (default ``"{index}"``; rosinality exports: ``"256-{index:05d}"``).
        raw_rgb: ``"keyed"`` layout only: values are raw square RGB pixels, not encoded files.
        cache_dir: where the LSUN key list is cached when the database folder is read-only.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int,
        layout: str = "lsun",
        center_crop: bool = True,
        key_format: str | None = None,
        raw_rgb: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.resolution = _check_resolution(resolution)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown LMDB layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        self.layout = layout
        self.center_crop = bool(center_crop)
        if layout == "lsun" and (key_format is not None or raw_rgb):
            raise ValueError("key_format and raw_rgb apply to layout='keyed' only")
        self.key_format = key_format if key_format is not None else "{index}"
        if layout == "keyed":
            try:
                self.key_format.format(index=0)
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"invalid key_format {self.key_format!r}: expected a pattern with the field 'index', "
                    "e.g. '{index}' or '256-{index:05d}'"
                ) from error
        self.raw_rgb = bool(raw_rgb)
        self.path = Path(path).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        if not self.path.exists():
            raise FileNotFoundError(self._missing_message())
        self._subdir = self.path.is_dir()
        if self._subdir and not (self.path / "data.mdb").exists():
            raise FileNotFoundError(
                f"'{self.path}' is not an LMDB database (no data.mdb inside). {self._preparation_hint()}"
            )
        self.class_names = [self.path.name.removesuffix("_lmdb") or "images"]
        self.num_classes = 1
        self._keys: list[bytes] | None = None
        self.key_cache_file: Path | None = None

        shared = self._env_key() in _ENVS  # already open in this process (or inherited): reuse / replace it
        env = self._get_env() if shared else self._open()
        try:
            entries = int(env.stat()["entries"])
            if layout == "lsun":
                self._keys = self._load_keys(env, entries)
                self.length = len(self._keys)
            else:
                with env.begin(write=False) as txn:
                    stored = txn.get(b"length")
                if stored is not None:
                    try:
                        self.length = int(bytes(stored).decode("ascii").strip())
                    except ValueError as error:
                        raise RuntimeError(
                            f"LMDB '{self.path}': the 'length' key holds {bytes(stored)[:32]!r}, not an integer"
                        ) from error
                else:
                    self.length = entries
                with env.begin(write=False) as txn:
                    if self.length > 0 and txn.get(self._key(0)) is None:
                        raise KeyError(
                            f"LMDB '{self.path}' (layout 'keyed') has no key {self._key(0).decode()!r} for item 0; "
                            f"check key_format (now {self.key_format!r}; rosinality exports use '256-{{index:05d}}', "
                            "NVAE/DDGAN exports '{index}') or use layout='lsun'"
                        )
        finally:
            if not shared:
                env.close()  # nothing stays open in the main process: workers open their own
        if self.length <= 0:
            raise ValueError(f"LMDB '{self.path}' holds no images")
        self._fingerprint = self._compute_fingerprint(entries)

    # ---------------------------------------------------------------- messages
    def _preparation_hint(self) -> str:
        if self.layout == "lsun":
            return (
                "Download and unzip an LSUN category first (see docs/datasets.md), e.g. "
                "`python download.py -c church_outdoor` from https://github.com/fyu/lsun then "
                "`unzip church_outdoor_train_lmdb.zip -d data/lsun`, and pass data.dataset.path=<...>_train_lmdb"
            )
        return (
            "Build the LMDB first (see docs/datasets.md), e.g. "
            "`python prepare_data.py --out data/ffhq_lmdb --size 256 <image folder>` from "
            "https://github.com/rosinality/stylegan2-pytorch (then key_format='256-{index:05d}'), "
            "or use the image-folder config instead"
        )

    def _missing_message(self) -> str:
        return f"LMDB database '{self.path}' does not exist. {self._preparation_hint()}"

    # ---------------------------------------------------------------- database access
    def _open(self):
        lmdb = _import_lmdb()
        try:
            return lmdb.open(
                str(self.path),
                subdir=self._subdir,
                readonly=True,
                lock=False,
                readahead=False,
                meminit=False,
                max_readers=256,
            )
        except lmdb.Error as error:
            raise RuntimeError(
                f"cannot open LMDB database '{self.path}': {error}. {self._preparation_hint()}"
            ) from error

    def _data_file(self) -> Path:
        return self.path / "data.mdb" if self._subdir else self.path

    def _db_signature(self, entries: int) -> dict:
        stat = self._data_file().stat()
        return {"entries": entries, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _key_cache_candidates(self) -> list[Path]:
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:16]
        fallback = (
            self.cache_dir
            or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "latent_flow" / "lmdb_keys"
        )
        first = (
            self.path / KEY_CACHE_NAME if self._subdir else self.path.with_name(self.path.name + "." + KEY_CACHE_NAME)
        )
        return [first, fallback / f"{digest}.txt"]

    def _load_keys(self, env, entries: int) -> list[bytes]:
        signature = {"version": _KEY_CACHE_VERSION, **self._db_signature(entries)}
        candidates = self._key_cache_candidates()
        for cache in candidates:
            keys = self._read_key_cache(cache, signature)
            if keys is not None:
                self.key_cache_file = cache
                return keys
        with env.begin(write=False) as txn:
            keys = [bytes(key) for key in txn.cursor().iternext(keys=True, values=False)]
        for cache in candidates:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
                with open(tmp, "w", encoding="ascii") as handle:
                    handle.write(json.dumps(signature, sort_keys=True) + "\n")
                    handle.writelines(key.hex() + "\n" for key in keys)
                os.replace(tmp, cache)
            except OSError:
                continue
            self.key_cache_file = cache
            break
        return keys

    @staticmethod
    def _read_key_cache(cache: Path, signature: dict) -> list[bytes] | None:
        try:
            with open(cache, encoding="ascii") as handle:
                header = json.loads(handle.readline())
                if header != signature:
                    return None
                keys = [bytes.fromhex(line.strip()) for line in handle if line.strip()]
        except (OSError, ValueError):
            return None
        return keys if len(keys) == signature["entries"] else None

    def _key(self, index: int) -> bytes:
        if self._keys is not None:
            return self._keys[index]
        return self.key_format.format(index=index).encode()

    def _compute_fingerprint(self, entries: int) -> str:
        config = {
            "class": type(self).__name__,
            "path": str(self.path.resolve()),
            "layout": self.layout,
            "key_format": self.key_format if self.layout == "keyed" else None,
            "raw_rgb": self.raw_rgb,
            "length": self.length,
            "db": self._db_signature(entries),
            "resolution": self.resolution,
            "center_crop": self.center_crop,
        }
        return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def fingerprint(self) -> str:
        """sha1 of the path, layout, length, database entry count / size / mtime, resolution and crop flag."""
        return self._fingerprint

    # ---------------------------------------------------------------- per-process handle
    def _env_key(self) -> str:
        return str(self.path.resolve())

    def _get_env(self):
        """The process's read-only handle, opened on first use in this process (fork-safe).

        py-lmdb refuses to open one database twice in a process, so the handle is shared by all
        datasets on the same path (module registry keyed by path, tagged with the process id).
        A handle inherited through ``fork`` is closed (in the child only) and reopened.
        """
        key = self._env_key()
        entry = _ENVS.get(key)
        if entry is not None and entry[0] == os.getpid():
            return entry[1]
        if entry is not None:  # inherited from the parent process: never used across fork
            try:
                entry[1].close()
            except Exception:  # noqa: BLE001 - best effort
                pass
        env = self._open()
        _ENVS[key] = (os.getpid(), env)
        return env

    def close(self) -> None:
        """Close this process's handle on the database (reopened on the next read)."""
        entry = _ENVS.pop(self._env_key(), None)
        if entry is not None and entry[0] == os.getpid():
            entry[1].close()

    # ---------------------------------------------------------------- items
    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path='{self.path}', layout='{self.layout}', resolution={self.resolution}, "
            f"{self.length} images)"
        )

    def read_bytes(self, index: int) -> bytes:
        key = self._key(index)
        with self._get_env().begin(write=False) as txn:
            value = txn.get(key)
        if value is None:
            raise KeyError(f"LMDB '{self.path}': key {key.decode(errors='replace')!r} (item {index}) is missing")
        return bytes(value)

    def load_image(self, index: int) -> Image.Image:
        """Decode item ``index`` as an RGB ``resolution x resolution`` PIL image."""
        value = self.read_bytes(index)
        key = self._key(index).decode(errors="replace")
        try:
            if self.raw_rgb:
                side = int(round((len(value) / 3) ** 0.5))
                if side * side * 3 != len(value):
                    raise ValueError(f"{len(value)} bytes is not a square RGB image")
                image = Image.fromarray(np.frombuffer(value, dtype=np.uint8).reshape(side, side, 3))
            else:
                with Image.open(io.BytesIO(value)) as opened:
                    opened.load()
                    image = to_rgb(ImageOps.exif_transpose(opened))
        except Exception as error:  # noqa: BLE001 - re-raised with the key
            raise RuntimeError(
                f"failed to decode LMDB entry {key!r} (item {index}) of '{self.path}': {error}"
            ) from error
        return resize_center_crop(image, self.resolution, self.center_crop)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = operator.index(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.length}")
        return {
            "image": pil_to_tensor(self.load_image(index)),
            "label": torch.tensor(0, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
