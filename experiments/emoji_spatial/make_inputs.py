"""Write CLI inputs for the emoji spatial models: held-out emoji as a user would bring them, their part maps, masks.

    .venv/bin/python experiments/emoji_spatial/make_inputs.py OUT_DIR [n=4] [resolution=64] [data_root=.cache/emoji]

For the first ``n`` held-out OpenMoji (``EmojiDataset(split=val, part_maps=True)``, never trained on):

* OUT_DIR/images/NNN.png: the SVG rendered by resvg as a **transparent RGBA** PNG (what one downloads
  from openmoji.org; ``python -m latent_flow.sample inputs=`` composites it on white, as the dataset was);
* OUT_DIR/maps/NNN.png: the emoji's part map (palette PNG, pixel value = class id 0-5) for ``semantic=``;
* OUT_DIR/masks/<family>/NNN.png for every mask family (white = known, black = hole; ``part`` drawn from
  the emoji's own map, 1 px dilation), for ``masks=``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from latent_flow.data.emoji import EmojiDataset, find_openmoji_svg_dir, render_svg
from latent_flow.data.masks import MaskGenerator

FAMILIES = ("strokes", "boxes", "left", "right", "top", "bottom", "centre", "part")


def main(out: Path, n: int = 4, resolution: int = 64, data_root: str = ".cache/emoji") -> None:
    held = EmojiDataset(data_root, resolution=resolution, split="val", part_maps=True, prepare=False)
    svg_dir, _ = find_openmoji_svg_dir()
    generator = MaskGenerator(resolution, families=list(FAMILIES), part_dilation=1, seed=123)
    for sub in ("images", "maps", *(f"masks/{f}" for f in FAMILIES)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(min(n, len(held))):
        record = held.records[i]
        render_svg(svg_dir / f"{record['codepoints']}.svg", resolution).save(out / "images" / f"{i:03d}.png")
        shutil.copyfile(held._part_paths[i], out / "maps" / f"{i:03d}.png")
        part_map = held.load_part_map(i)
        for family in FAMILIES:
            known = generator.only(family)(i, 0, part_map)
            Image.fromarray(known.astype(np.uint8) * 255, mode="L").save(out / "masks" / family / f"{i:03d}.png")
        print(f"{i:03d}: {held.describe(i)}")
    print(f"wrote {min(n, len(held))} images, part maps and masks ({', '.join(FAMILIES)}) to {out}")


if __name__ == "__main__":
    options = dict(a.split("=", 1) for a in sys.argv[2:])
    main(Path(sys.argv[1]), int(options.get("n", 4)), int(options.get("resolution", 64)),
         options.get("data_root", ".cache/emoji"))  # fmt: skip
