"""Datasets: the built-in procedural shapes, folders of images, and the paper's datasets
(CelebA-HQ / FFHQ folders or LMDB, LSUN LMDB, ImageNet class folders, CelebAMask-HQ)."""

from latent_flow.data.celebamask import CelebAMaskHQDataset
from latent_flow.data.emoji import EmojiDataset
from latent_flow.data.image_folder import ImageFolderDataset
from latent_flow.data.imagenet import ImageNetDataset, adm_center_crop
from latent_flow.data.lmdb_dataset import LMDBImageDataset
from latent_flow.data.shapes import ShapesDataset

__all__ = [
    "CelebAMaskHQDataset",
    "EmojiDataset",
    "ImageFolderDataset",
    "ImageNetDataset",
    "LMDBImageDataset",
    "ShapesDataset",
    "adm_center_crop",
]
