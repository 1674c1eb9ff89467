r"""Steady low-Reynolds flow past NACA airfoils: a generated counterpart of AirfRANS.

Domain: the box ``[-2, 4] x [-2, 2]`` minus a NACA 4- or 5-digit airfoil of chord 1 (leading edge at the
origin, :mod:`dsmpnn.data.naca`), meshed with gmsh (triangles of size ``h_near`` at the airfoil growing to
``h_far``, :mod:`dsmpnn.data.meshing`). Flow: steady incompressible Navier–Stokes (:mod:`dsmpnn.data.navier_stokes`,
Taylor–Hood P2–P1, Newton) with kinematic viscosity ``nu = 0.01``:

- ``u = U (cos alpha, sin alpha)`` on the left, top and bottom sides (free stream at angle of attack ``alpha``),
- do-nothing ``nu du/dn - p n = 0`` on the right side (outflow), ``u = 0`` on the airfoil.

Each sample draws a random NACA code, ``alpha`` uniform in [-5, 15] degrees and ``U`` uniform in [0.5, 2],
so the chord Reynolds number ``Re = U c / nu`` is 50–200. Fidelity ``low``/``high`` = coarser/finer mesh
(about 800 / 2,900 vertices). A sample whose Newton iteration does not converge is not saved.

Node features (as :mod:`dsmpnn.data.airfrans`; positions are ``pos``):
``x = [U cos alpha, U sin alpha, sdf, n_x, n_y]`` ``[N, 5]`` with ``sdf`` the distance to the airfoil and
``n`` the unit normal on airfoil nodes pointing out of the fluid (zero elsewhere); ``y = [u, v, p]`` ``[N, 3]``
(vertex values of the P2/P1 fields; ``p`` is the kinematic pressure, about 0 at the outflow).

Usage::

    dsmpnn generate airfoil --n 100 --fidelity low --out data/airfoil_low --seed 0
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skfem import MeshTri

from dsmpnn.data.airfrans import INPUT_FIELDS as AIRFOIL_INPUT_FIELDS
from dsmpnn.data.airfrans import airfoil_inputs
from dsmpnn.data.dataset import Field, Manifest
from dsmpnn.data.meshing import airfoil_box_mesh, check_mesh
from dsmpnn.data.naca import naca_polygon, polygon_signed_distance, random_naca_code
from dsmpnn.data.navier_stokes import FlowSolution, require_converged, solve_navier_stokes
from dsmpnn.data.sample import MeshSample
from dsmpnn.data.solver_runs import GenerationReport, check_solver_options, write_converged_runs
from dsmpnn.errors import ConfigError

__all__ = ["NU", "BOX", "FIDELITY", "AirfoilCase", "random_case", "boundary_vertex_normals", "airfoil_flow",
           "generate_airfoil"]

NU = 0.01  # kinematic viscosity (chord 1): Re = U / NU
BOX = (-2.0, 4.0, -2.0, 2.0)  # xmin, xmax, ymin, ymax
# fidelity -> (mesh size at the airfoil, far-field size, outline points per surface)
FIDELITY = {"low": (0.03, 0.4, 40), "high": (0.015, 0.2, 80)}
TARGET_FIELDS = (Field("u", "m/s"), Field("v", "m/s"), Field("p", "m^2/s^2"))


@dataclass(frozen=True)
class AirfoilCase:
    code: str  # NACA code, e.g. "2412" or "23012"
    aoa_deg: float  # angle of attack alpha in degrees
    speed: float  # inlet speed U (m/s); Re = U * chord / NU

    @property
    def name(self) -> str:
        return f"naca{self.code}_aoa{self.aoa_deg:+.2f}_u{self.speed:.3f}"


def random_case(rng: np.random.Generator) -> AirfoilCase:
    return AirfoilCase(random_naca_code(rng), float(rng.uniform(-5.0, 15.0)), float(rng.uniform(0.5, 2.0)))


def _boundary_parts(mesh: MeshTri) -> tuple[np.ndarray, np.ndarray]:
    """(box boundary facets except the outflow side, airfoil facets) of the mesh."""
    facets = mesh.boundary_facets()
    mid = mesh.p[:, mesh.facets[:, facets]].mean(axis=1)  # [2, F] facet midpoints
    xmin, xmax, ymin, ymax = BOX
    tol = 1e-9
    inflow = (np.abs(mid[0] - xmin) < tol) | (np.abs(mid[1] - ymin) < tol) | (np.abs(mid[1] - ymax) < tol)
    outflow = np.abs(mid[0] - xmax) < tol
    return facets[inflow], facets[~inflow & ~outflow]


def boundary_vertex_normals(mesh: MeshTri, facets: np.ndarray) -> np.ndarray:
    """Unit normals ``[N, 2]`` at the vertices of the given boundary facets, pointing out of the mesh.

    Each vertex gets the normalised sum of its facets' normals; other vertices get zero.
    """
    a, b = mesh.p[:, mesh.facets[0, facets]], mesh.p[:, mesh.facets[1, facets]]  # [2, F]
    tri = mesh.t[:, mesh.f2t[0, facets]]  # [3, F] the cell of each facet
    centre = mesh.p[:, tri].mean(axis=1)  # [2, F]
    n = np.stack([b[1] - a[1], a[0] - b[0]])  # a normal of each facet
    n *= np.sign((((a + b) / 2 - centre) * n).sum(axis=0))  # flip to point away from the cell: out of the mesh
    n /= np.linalg.norm(n, axis=0)
    out = np.zeros((mesh.p.shape[1], 2))
    for k in range(2):
        np.add.at(out, mesh.facets[k, facets], n.T)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def airfoil_flow(case: AirfoilCase, fidelity: str = "low", max_newton: int = 15) -> tuple[MeshSample, FlowSolution]:
    """Mesh and solve one case; raise :class:`ConvergenceError` if Newton does not converge."""
    if fidelity not in FIDELITY:
        raise ConfigError(f"--fidelity is {fidelity!r}, expected one of {', '.join(FIDELITY)}")
    h_near, h_far, n_side = FIDELITY[fidelity]
    poly = naca_polygon(case.code, n_side)  # [M, 2]
    points, tris = airfoil_box_mesh(poly, BOX, h_near, h_far)
    check_mesh(points, tris, case.name)
    mesh = MeshTri(np.ascontiguousarray(points.T), np.ascontiguousarray(tris.T))
    inflow, wall = _boundary_parts(mesh)
    alpha = math.radians(case.aoa_deg)
    free_stream = np.array([case.speed * math.cos(alpha), case.speed * math.sin(alpha)])
    xmin, _, ymin, ymax = BOX

    def velocity_bc(x: np.ndarray) -> np.ndarray:  # x [2, ...] -> [2, ...]: free stream on the box, 0 elsewhere
        on_box = (np.abs(x[0] - xmin) < 1e-9) | (np.abs(x[1] - ymin) < 1e-9) | (np.abs(x[1] - ymax) < 1e-9)
        return free_stream.reshape(2, *([1] * (x.ndim - 1))) * on_box

    sol = solve_navier_stokes(mesh, NU, np.concatenate([inflow, wall]), velocity_bc, max_newton=max_newton)
    require_converged(sol, f"airfoil case {case.name} (Re {case.speed / NU:.0f})")
    pos = mesh.p.T  # [N, 2]
    sdf = np.maximum(polygon_signed_distance(pos, poly), 0.0)  # every node is in the fluid
    x = airfoil_inputs(case.speed, case.aoa_deg, sdf, boundary_vertex_normals(mesh, wall))
    y = np.column_stack([sol.vertex_velocity(), sol.vertex_pressure()])  # [N, 3]
    return MeshSample(pos, x, y, mesh.t.T.astype(np.int64), "triangle", name=f"airfoil_{fidelity}"), sol


def generate_airfoil(out: str | os.PathLike, n: int, fidelity: str = "low", seed: int = 0,
                     splits: Sequence[float] = (0.8, 0.1, 0.1), max_newton: int = 15, max_attempts: int | None = None,
                     progress: bool = True) -> tuple[Manifest, GenerationReport]:
    """Generate ``n`` converged airfoil samples and write them as a dataset; unconverged cases are refused.

    Attempt ``k`` draws its case with :func:`~dsmpnn.data.solver_runs.attempt_rng` ``(seed, k)``; see
    :func:`~dsmpnn.data.solver_runs.write_converged_runs` for how refused cases are replaced and reported.
    """
    if fidelity not in FIDELITY:
        raise ConfigError(f"--fidelity is {fidelity!r}, expected one of {', '.join(FIDELITY)}")
    check_solver_options(seed, max_newton)
    description = (f"steady Navier-Stokes past NACA airfoils, nu = {NU}, Re = 50-200, alpha in [-5, 15] deg, "
                   f"box {BOX}, fidelity {fidelity} (h = {FIDELITY[fidelity][0]} at the airfoil), "
                   f"Taylor-Hood P2-P1 + Newton; seed {seed}")
    return write_converged_runs(out, n, lambda rng: airfoil_flow(random_case(rng), fidelity, max_newton),
                                AIRFOIL_INPUT_FIELDS, TARGET_FIELDS, f"airfoil_{fidelity}", description, seed,
                                splits, max_attempts, progress)
