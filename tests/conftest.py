"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsmpnn.data import generate_darcy
from dsmpnn.train import load_config, train
from tests.helpers.cli_cases import TINY


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    """A 4-mesh Darcy set (64 nodes a mesh) and a run trained on it for one epoch: read-only for every test
    (copy them to change them: ``World.copy_data``, ``World.copy_run``)."""
    root = tmp_path_factory.mktemp("bad")
    data, run = root / "darcy", root / "run"
    generate_darcy(data, n=4, resolution=8, seed=0, splits=(0.5, 0.25, 0.25), progress=False)
    train(load_config(None, [*TINY, "train.epochs=1"]), data, run, progress=False, echo=lambda s: None)
    return data, run
