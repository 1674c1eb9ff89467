"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


# --- devices: every test parametrised with `device` runs on CPU, and on CUDA where a GPU is present -------------

HAS_CUDA = torch.cuda.is_available()
NO_CUDA_REASON = "no CUDA device here (torch.cuda.is_available() is False): the CUDA case needs a GPU"
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)])]
"""``@pytest.mark.parametrize("device", DEVICES)``, or the ``device`` fixture: "cpu" always, "cuda" marked
``cuda`` and skipped (with a reason) without a GPU. ``pytest -m cuda`` selects the CUDA cases alone."""


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """A torch device: cpu, then cuda (skipped without a GPU)."""
    return torch.device(request.param)


@pytest.fixture
def exact_float32():
    """float32 products stay float32 on CUDA while the test runs: TF32 (10-bit mantissa inputs in matmuls and
    convolutions, on by default for cuDNN and optionally for matmuls) is switched off, so tolerances written for
    float32 round-off hold; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
