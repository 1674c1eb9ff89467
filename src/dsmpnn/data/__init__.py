"""Mesh samples, the on-disk dataset format, normalisation, generators and importers."""

from dsmpnn.data.darcy import generate_darcy, solve_darcy
from dsmpnn.data.dataset import Dataset, Field, Manifest, read_sample_file, write_dataset, write_sample_file
from dsmpnn.data.grid import grid_to_sample, write_grid_dataset
from dsmpnn.data.grid_import import import_grid
from dsmpnn.data.normalize import RunningStats, Stats
from dsmpnn.data.sample import MeshSample

__all__ = ["Dataset", "Field", "Manifest", "MeshSample", "RunningStats", "Stats", "generate_darcy", "grid_to_sample",
           "import_grid", "read_sample_file", "solve_darcy", "write_dataset", "write_grid_dataset",
           "write_sample_file"]
