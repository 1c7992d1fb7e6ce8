"""Datasets: stand-in generators and format readers, all writing the dataset HDF5 (see dataset.py)."""
from .dataset import Dataset, read_dataset, write_dataset
from .imagefolder import DataError, prepare_image_folder
from .synthetic import SHAPES, generate_shapes

__all__ = ["Dataset", "read_dataset", "write_dataset", "DataError", "prepare_image_folder",
           "SHAPES", "generate_shapes"]
