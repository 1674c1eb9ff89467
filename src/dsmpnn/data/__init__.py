"""Mesh samples, the on-disk dataset format, normalisation, generators and importers."""

from typing import TYPE_CHECKING

from dsmpnn._lazy import lazy_package

if TYPE_CHECKING:
    from dsmpnn.data.darcy import generate_darcy, solve_darcy
    from dsmpnn.data.dataset import Dataset, Field, Manifest, read_sample_file, write_dataset, write_sample_file
    from dsmpnn.data.grid import grid_to_sample, write_grid_dataset
    from dsmpnn.data.grid_import import import_grid
    from dsmpnn.data.normalize import RunningStats, Stats
    from dsmpnn.data.sample import MeshSample

__all__ = ["Dataset", "Field", "Manifest", "MeshSample", "RunningStats", "Stats", "generate_darcy", "grid_to_sample",
           "import_grid", "read_sample_file", "solve_darcy", "write_dataset", "write_grid_dataset",
           "write_sample_file"]

_LAZY = {"generate_darcy": "darcy", "solve_darcy": "darcy", "Dataset": "dataset", "Field": "dataset", "Manifest":
         "dataset", "read_sample_file": "dataset", "write_dataset": "dataset", "write_sample_file": "dataset",
         "grid_to_sample": "grid", "write_grid_dataset": "grid", "import_grid": "grid_import", "RunningStats":
         "normalize", "Stats": "normalize", "MeshSample": "sample"}
lazy_package(__name__)
