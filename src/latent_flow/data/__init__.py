"""Datasets: the built-in procedural shapes dataset and folders of the user's own images."""

from latent_flow.data.image_folder import ImageFolderDataset
from latent_flow.data.shapes import ShapesDataset

__all__ = ["ImageFolderDataset", "ShapesDataset"]
