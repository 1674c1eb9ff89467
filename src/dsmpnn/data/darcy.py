r"""2D Darcy flow, the benchmark of Li et al. 2020 (Graph Kernel Network / Fourier Neural Operator).

.. math::  -\nabla\cdot(a(x)\,\nabla u(x)) = f(x) \quad x \in (0, 1)^2, \qquad u = 0 \text{ on the boundary}

with ``f = 1`` and a piecewise-constant coefficient ``a = 12`` where a Gaussian random field
``psi ~ N(0, (-Laplacian + 9 I)^-2)`` is ``>= 0`` and ``a = 3`` elsewhere.

The GRF follows their MATLAB ``GRF(alpha=2, tau=3, s)`` (a cosine / Karhunen-Loeve expansion sampled with the
orthonormal inverse DCT-II, MATLAB's ``idct2``). The PDE is solved by a 5-point finite-volume scheme on the
``S x S`` grid of nodes including the boundary (spacing ``h = 1 / (S - 1)``), assembled as a sparse matrix over
the interior nodes and solved with a sparse direct solver (SuperLU).

Arrays are ``[H, W]`` with axis 0 along y and axis 1 along x (see :mod:`dsmpnn.data.grid`).

Usage::

    dsmpnn generate darcy --n 1000 --resolution 64 --out data/darcy64 --seed 0
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.fft import idctn
from scipy.ndimage import gaussian_filter
from scipy.sparse.linalg import splu

from dsmpnn.data.dataset import Field, Manifest
from dsmpnn.data.grid import GridLayout, write_grid_samples
from dsmpnn.errors import ConfigError, DatasetError
from dsmpnn.ranges import SEED_MAX
from dsmpnn.resources import check_resources

__all__ = ["A_HIGH", "A_LOW", "grf", "threshold_coefficient", "solve_darcy", "darcy_sample", "sample_rng",
           "generate_darcy", "coefficient_features"]

A_HIGH, A_LOW = 12.0, 3.0  # a where psi >= 0 / psi < 0 (Li et al. 2020)
INPUT_FIELDS = (Field("a", "1"), Field("boundary", "1"), Field("a_smooth", "1"), Field("a_smooth_dx", "1"),
                Field("a_smooth_dy", "1"))  # coefficient, 1 on boundary nodes, smoothed a and its gradient (GKN)
SMOOTH_SIGMA = 0.02  # length scale of the Gaussian smoothing of a, as in the GKN's Darcy features
TARGET_FIELDS = (Field("u", "1"),)  # y column: the solution


def grf(s: int, rng: np.random.Generator, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """A sample ``[s, s]`` of the Gaussian random field ``N(0, tau^(2 alpha - 2) (-Laplacian + tau^2 I)^-alpha)``.

    Port of the MATLAB ``GRF(alpha, tau, s)`` of Li et al.: KL coefficients ``s * coef * xi`` on the cosine
    basis, the constant mode removed, mapped to the grid by the orthonormal inverse DCT-II (``idct2``).
    """
    xi = rng.standard_normal((s, s))  # [s, s] KL random variables
    k2, k1 = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")  # MATLAB meshgrid(0:s-1, 0:s-1)
    coef = tau ** (alpha - 1) * (np.pi**2 * (k1**2 + k2**2) + tau**2) ** (-alpha / 2)  # sqrt of eigenvalues
    coeffs = s * coef * xi
    coeffs[0, 0] = 0.0
    return idctn(coeffs, type=2, norm="ortho")  # [s, s]


def threshold_coefficient(psi: np.ndarray) -> np.ndarray:
    """``a = 12`` where ``psi >= 0``, else ``3``."""
    return np.where(psi >= 0, A_HIGH, A_LOW)


def solve_darcy(a: np.ndarray, f: float | np.ndarray = 1.0,
                mean: Literal["harmonic", "arithmetic"] = "harmonic") -> np.ndarray:
    r"""Solve ``-div(a grad u) = f`` on the unit square with ``u = 0`` on the boundary.

    Node ``(i, j)`` is at ``(x_j, y_i) = (j h_x, i h_y)``, ``h_x = 1 / (W - 1)``, ``h_y = 1 / (H - 1)``; the
    boundary rows/columns are Dirichlet nodes. At each interior node the 5-point finite-volume balance

    .. math:: -\frac{a_{i,j+1/2}(u_{i,j+1} - u_{ij}) - a_{i,j-1/2}(u_{ij} - u_{i,j-1})}{h_x^2}
              -\frac{a_{i+1/2,j}(u_{i+1,j} - u_{ij}) - a_{i-1/2,j}(u_{ij} - u_{i-1,j})}{h_y^2} = f_{ij}

    uses face coefficients that are the harmonic mean of the two node values (default; the exact flux of a
    1D layer whose coefficient jumps between the nodes, the usual choice for piecewise-constant ``a``) or the
    arithmetic mean. Both are second-order accurate for smooth ``a``.

    Shapes:
        a: [H, W] positive coefficient at the nodes; f: scalar or [H, W]; returns u: [H, W]
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 3:
        raise DatasetError(f"solve_darcy: coefficient has shape {a.shape}, expected [H, W] with H, W >= 3")
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        raise DatasetError("solve_darcy: coefficient must be finite and > 0 everywhere")
    h, w = a.shape
    f = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape)
    hx2, hy2 = (1.0 / (w - 1)) ** 2, (1.0 / (h - 1)) ** 2
    if mean == "harmonic":
        ax = 2 * a[:, :-1] * a[:, 1:] / (a[:, :-1] + a[:, 1:]) / hx2  # [H, W-1] face (i, j+1/2), over h_x^2
        ay = 2 * a[:-1, :] * a[1:, :] / (a[:-1, :] + a[1:, :]) / hy2  # [H-1, W] face (i+1/2, j), over h_y^2
    elif mean == "arithmetic":
        ax = 0.5 * (a[:, :-1] + a[:, 1:]) / hx2
        ay = 0.5 * (a[:-1, :] + a[1:, :]) / hy2
    else:
        raise ValueError(f"mean must be 'harmonic' or 'arithmetic', got {mean!r}")

    ni, nj = h - 2, w - 2  # interior nodes, unknown (i, j) -> (i - 1) * nj + (j - 1)
    idx = np.arange(ni * nj).reshape(ni, nj)
    diag = (ax[1:-1, 1:] + ax[1:-1, :-1] + ay[1:, 1:-1] + ay[:-1, 1:-1]).ravel()  # [ni*nj] sum of 4 faces
    east = -ax[1:-1, 1:-1]  # [ni, nj-1] coupling interior (i, j) <-> (i, j+1)
    north = -ay[1:-1, 1:-1]  # [ni-1, nj] coupling interior (i, j) <-> (i+1, j)
    rows = np.concatenate([idx.ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel(), idx[:-1].ravel(), idx[1:].ravel()])
    cols = np.concatenate([idx.ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel(), idx[1:].ravel(), idx[:-1].ravel()])
    vals = np.concatenate([diag, east.ravel(), east.ravel(), north.ravel(), north.ravel()])
    matrix = sp.csc_matrix((vals, (rows, cols)), shape=(ni * nj, ni * nj))  # SPD, boundary values are 0
    u = np.zeros((h, w))
    u[1:-1, 1:-1] = splu(matrix).solve(np.ascontiguousarray(f[1:-1, 1:-1]).ravel()).reshape(ni, nj)
    return u


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of how many samples are drawn with the same seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def darcy_sample(resolution: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One Darcy problem: coefficient ``a [S, S]`` (values 3 and 12) and solution ``u [S, S]`` for ``f = 1``."""
    a = threshold_coefficient(grf(resolution, rng))
    return a, solve_darcy(a, 1.0)


def coefficient_features(a: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    r"""The Graph Kernel Network's node features of a: :math:`[a_\sigma, \partial_x a_\sigma, \partial_y a_\sigma]`,
    with :math:`a_\sigma` the Gaussian smoothing of a (standard deviation ``sigma`` in unit-square lengths).

    Shapes: a [S, S] -> [S, S, 3].
    """
    h = 1.0 / (a.shape[0] - 1)
    smooth = gaussian_filter(a, sigma / h, mode="nearest")
    dy, dx = np.gradient(smooth, h)
    return np.stack([smooth, dx, dy], axis=-1)


def darcy_bytes(n: int, resolution: int) -> tuple[int, int]:
    """Estimated peak memory and disk bytes of :func:`generate_darcy`.

    Memory: one sample at a time; the GRF, the sparse matrix and SuperLU's factors take about
    ``S^2 (1024 + 128 log2 S)`` bytes (measured 1.4 / 1.7 / 1.9 KB per node at S = 128 / 256 / 512), plus about
    256 bytes per sample for the split labels and the manifest. Disk: positions, 5 inputs and 1 target as
    float64 and the quad cells, about 96 bytes per node.
    """
    nodes = resolution**2
    memory = int(nodes * (1024 + 128 * math.log2(resolution))) + 256 * n
    return memory, 96 * nodes * n


def generate_darcy(
    out: str | os.PathLike,
    n: int,
    resolution: int = 64,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> Manifest:
    """Generate ``n`` Darcy samples on a ``resolution x resolution`` grid and write them as a dataset.

    Inputs ``x = [a, boundary, a_smooth, a_smooth_dx, a_smooth_dy]`` (boundary = 1 on the boundary nodes; the
    smoothed coefficient and its gradient are the Graph Kernel Network's features), target ``y = [u]``. Sample ``k`` uses
    :func:`sample_rng` ``(seed, k)``, so it is reproducible on its own; the split assignment is a permutation
    seeded with ``seed``. About 20 ms per sample at S = 64 (solve and write): 1000 samples in under 30 s.
    """
    if n < 1:
        raise ConfigError(f"--n is {n}, expected at least 1 sample")
    if resolution < 3:
        raise ConfigError(f"--resolution is {resolution}, expected at least 3 nodes per side")
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed is {seed}, expected an integer in [0, {SEED_MAX}]")
    memory, disk = darcy_bytes(n, resolution)
    check_resources(f"--n {n} at --resolution {resolution}", memory, disk, out)
    layout = GridLayout()  # endpoint nodes on the unit square: the solver's Dirichlet rows are the walls
    bnd = layout.boundary(resolution, resolution)

    def grids() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(n):
            a, u = darcy_sample(resolution, sample_rng(seed, k))
            inputs = np.concatenate([np.stack([a, bnd], axis=-1), coefficient_features(a)], axis=-1)
            yield inputs, u[..., None]  # [S, S, 5], [S, S, 1]

    description = (f"Darcy flow -div(a grad u) = 1, u = 0 on the boundary of the unit square; {resolution}x"
                   f"{resolution} grid; a = 12/3 thresholded GRF(alpha=2, tau=3) (Li et al. 2020); seed {seed}")
    return write_grid_samples(out, grids(), n, INPUT_FIELDS, TARGET_FIELDS, "darcy", splits, seed, description,
                              progress, layout, (resolution, resolution))
