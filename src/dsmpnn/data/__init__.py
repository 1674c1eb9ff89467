"""Mesh samples, the on-disk dataset format, normalisation, generators and importers."""

from dsmpnn.data.dataset import Dataset, Field, Manifest, read_sample_file, write_dataset, write_sample_file
from dsmpnn.data.normalize import RunningStats, Stats
from dsmpnn.data.sample import MeshSample

__all__ = ["Dataset", "Field", "Manifest", "MeshSample", "RunningStats", "Stats", "read_sample_file",
           "write_dataset", "write_sample_file"]
