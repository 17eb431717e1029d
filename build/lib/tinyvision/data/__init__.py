"""Datasets as LightningDataModules."""

from tinyvision.data.datamodule import FolderDataModule, ImageDataModule, TensorDataModule

__all__ = ["FolderDataModule", "ImageDataModule", "TensorDataModule"]
