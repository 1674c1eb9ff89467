r"""Steady 3D flow over a backward-facing step in a closed channel.

Domain: the channel ``[0, 3] x [0, 1] x [0, 0.5]`` (x streamwise, y wall-normal, z spanwise) minus the step
block ``[0, 0.5] x [0, h_s] x [0, 0.5]``, tetrahedralised by gmsh with mesh size ``1 / resolution``
(:mod:`dsmpnn.data.meshing`). Flow: steady incompressible Navier–Stokes, Taylor–Hood P2–P1 tetrahedra, Stokes
start, Picard then Newton (:mod:`dsmpnn.data.navier_stokes`), kinematic viscosity ``nu = 0.02``:

- inlet ``x = 0``, ``h_s < y < 1``: the duct profile
  ``u = U * 16 (y - h_s)(1 - y) z (W - z) / ((1 - h_s)^2 W^2)``, ``v = w = 0`` (peak speed ``U``);
- outlet ``x = 3``: do-nothing ``nu du/dn - p n = 0``;
- every other face (walls, step): no slip ``u = 0``.

Each sample draws ``U`` uniform in [0.2, 1] and ``h_s`` uniform in [0.2, 0.5]: step Reynolds numbers
``U h_s / nu`` of 2–25. A sample whose nonlinear solve does not converge is not saved.

Node features: ``x = [U, h_s, wall]`` ``[N, 3]`` (``wall`` = 1 on no-slip wall nodes), ``y = [u, v, w, p]``
``[N, 4]`` (vertex values; ``p`` kinematic pressure), positions ``pos [N, 3]``, cells tetrahedra.

Usage::

    dsmpnn generate step3d --n 50 --out data/step3d --seed 0 --resolution 8
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skfem import MeshTet

from dsmpnn.data.dataset import Field, Manifest
from dsmpnn.data.meshing import check_mesh, step_channel_mesh
from dsmpnn.data.navier_stokes import FlowSolution, require_converged, solve_navier_stokes
from dsmpnn.data.sample import MeshSample
from dsmpnn.data.solver_runs import GenerationReport, check_solver_options, write_converged_runs
from dsmpnn.errors import ConfigError

__all__ = ["NU", "LENGTH", "HEIGHT", "WIDTH", "STEP_LENGTH", "StepCase", "random_case", "step_flow",
           "generate_step3d"]

NU = 0.02
LENGTH, HEIGHT, WIDTH, STEP_LENGTH = 3.0, 1.0, 0.5, 0.5
INPUT_FIELDS = (Field("inlet_speed", "m/s"), Field("step_height", "m"), Field("wall", "1"))
TARGET_FIELDS = (Field("u", "m/s"), Field("v", "m/s"), Field("w", "m/s"), Field("p", "m^2/s^2"))


@dataclass(frozen=True)
class StepCase:
    speed: float  # peak inlet speed U
    step_height: float  # h_s

    @property
    def name(self) -> str:
        return f"step_h{self.step_height:.3f}_u{self.speed:.3f}"


def random_case(rng: np.random.Generator) -> StepCase:
    return StepCase(float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.2, 0.5)))


def inlet_profile(x: np.ndarray, case: StepCase) -> np.ndarray:
    """Velocity ``[3, ...]`` at points ``x [3, ...]``: the inlet profile on ``x = 0``, zero elsewhere."""
    hs = case.step_height
    shape = 16 * (x[1] - hs) * (HEIGHT - x[1]) * x[2] * (WIDTH - x[2]) / ((HEIGHT - hs) ** 2 * WIDTH**2)
    u = np.zeros_like(x)
    u[0] = np.where(np.abs(x[0]) < 1e-9, case.speed * np.maximum(shape, 0.0), 0.0)
    return u


def step_flow(case: StepCase, resolution: int = 8, convection: bool = True,
              max_newton: int = 15) -> tuple[MeshSample, FlowSolution]:
    """Mesh and solve one case; raise :class:`~dsmpnn.data.navier_stokes.ConvergenceError` if unconverged."""
    if resolution < 2:
        raise ConfigError(f"--resolution is {resolution}, expected at least 2 cells across the channel height")
    points, tets = step_channel_mesh(LENGTH, HEIGHT, WIDTH, STEP_LENGTH, case.step_height, HEIGHT / resolution)
    check_mesh(points, tets, case.name)
    mesh = MeshTet(np.ascontiguousarray(points.T), np.ascontiguousarray(tets.T))
    facets = mesh.boundary_facets()
    mid = mesh.p[:, mesh.facets[:, facets]].mean(axis=1)  # [3, F] facet centroids
    outlet = np.abs(mid[0] - LENGTH) < 1e-9
    inlet = np.abs(mid[0]) < 1e-9
    sol = solve_navier_stokes(mesh, NU, facets[~outlet], lambda x: inlet_profile(x, case), convection=convection,
                              max_newton=max_newton)
    require_converged(sol, f"step3d case {case.name} (Re_h {case.speed * case.step_height / NU:.1f})")
    wall = np.zeros(mesh.p.shape[1])
    wall[np.unique(mesh.facets[:, facets[~outlet & ~inlet]])] = 1.0
    n = mesh.p.shape[1]
    x = np.column_stack([np.full(n, case.speed), np.full(n, case.step_height), wall])  # [N, 3]
    y = np.column_stack([sol.vertex_velocity(), sol.vertex_pressure()])  # [N, 4]
    return MeshSample(mesh.p.T, x, y, mesh.t.T.astype(np.int64), "tetra", name="step3d"), sol


def generate_step3d(out: str | os.PathLike, n: int, resolution: int = 8, seed: int = 0,
                    splits: Sequence[float] = (0.8, 0.1, 0.1), max_newton: int = 15,
                    max_attempts: int | None = None, progress: bool = True) -> tuple[Manifest, GenerationReport]:
    """Generate ``n`` converged backward-facing-step samples and write them as a dataset."""
    if resolution < 2:
        raise ConfigError(f"--resolution is {resolution}, expected at least 2 cells across the channel height")
    check_solver_options(seed, max_newton)
    description = (f"steady 3D Navier-Stokes over a backward-facing step, channel {LENGTH}x{HEIGHT}x{WIDTH}, "
                   f"nu = {NU}, U in [0.2, 1], h_s in [0.2, 0.5], mesh size {HEIGHT / resolution:g}, "
                   f"Taylor-Hood P2-P1 tetrahedra + Newton; seed {seed}")
    return write_converged_runs(out, n, lambda rng: step_flow(random_case(rng), resolution, True, max_newton),
                                INPUT_FIELDS, TARGET_FIELDS, "step3d", description, seed, splits, max_attempts,
                                progress)
