"""Write CLI inputs for the shapes spatial models: held-out renders, their index maps and masks.

    .venv/bin/python experiments/shapes_spatial/make_inputs.py OUT_DIR [n=4]

OUT_DIR/images/NNN.png (RGB renders of ShapesDataset seed 777, never trained on),
OUT_DIR/maps/NNN.png (index PNGs, pixel value = class id, 0 = background),
OUT_DIR/masks/NNN.png (white = known, black = hole; strokes / boxes with 10-50% holes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from latent_flow.data import ShapesDataset
from latent_flow.data.masks import MaskGenerator

out = Path(sys.argv[1])
n = int(dict(a.split("=", 1) for a in sys.argv[2:]).get("n", 4))
data = ShapesDataset(num_samples=n, resolution=32, seed=777)
masks = MaskGenerator(32, hole_min=0.1, hole_max=0.5, seed=123)
for sub in ("images", "maps", "masks"):
    (out / sub).mkdir(parents=True, exist_ok=True)
for i in range(n):
    image, _, semantic = data.render(i)
    Image.fromarray(image).save(out / "images" / f"{i:03d}.png")
    Image.fromarray(semantic.astype(np.uint8), mode="L").save(out / "maps" / f"{i:03d}.png")
    Image.fromarray(masks(i).astype(np.uint8) * 255, mode="L").save(out / "masks" / f"{i:03d}.png")
print(f"wrote {n} images, maps and masks to {out}")
