"""Small shared helpers (image files, JSON, grids)."""

from latent_flow.utils.images import make_grid_image, save_png, to_uint8
from latent_flow.utils.io import write_json

__all__ = ["make_grid_image", "save_png", "to_uint8", "write_json"]
