r"""Steady incompressible Navier–Stokes (or Stokes) with Taylor–Hood P2–P1 finite elements (scikit-fem).

.. math::  -\nu \Delta u + (u \cdot \nabla) u + \nabla p = 0, \qquad \nabla \cdot u = 0 \quad \text{in } \Omega

with ``u = g`` on the Dirichlet facets and the "do-nothing" condition
:math:`\nu\, \partial u / \partial n - p\, n = 0` on every other boundary facet (it is the natural condition of
the weak form below, so an outflow needs no code). Weak form, for all test functions ``(v, q)``:

.. math::  R(u, p; v, q) = \int_\Omega \nu \nabla u : \nabla v + ((u \cdot \nabla) u) \cdot v
                           - p\, \nabla \cdot v - q\, \nabla \cdot u \,dx = 0

Discretisation: continuous P2 velocity and P1 pressure on triangles (2D) or tetrahedra (3D), inf-sup stable, with
L2 errors O(h^3) in u and O(h^2) in p for smooth solutions (``tests/data/test_navier_stokes.py`` fits them on
Kovasznay flow). Nonlinear solve: ``picard`` Oseen iterations (the first one, from ``u = 0``, is the Stokes solve)
then Newton with the exact Jacobian

.. math::  J(\delta u, \delta p; v, q) = \int \nu \nabla\delta u : \nabla v + ((u\cdot\nabla)\delta u
           + (\delta u\cdot\nabla) u)\cdot v - \delta p\, \nabla\cdot v - q\, \nabla\cdot\delta u \,dx,

each linear system solved with a sparse direct solver (SuperLU, on the unknowns reordered once per solve by
METIS nested dissection, with threshold partial pivoting: about 4x less fill than SuperLU's default COLAMD on
these saddle-point systems); the convection matrices come from scalar P2 forms (:class:`ConvectionAssembler`).
The solution is called converged when the Euclidean norm of the residual vector over the free degrees of freedom has dropped below ``rtol`` times its value
at the initial guess (Dirichlet data lifted, zero elsewhere) or below ``atol``.

Shapes: ``mesh.p`` is ``[d, N]`` (vertices), the unknown vector is ``[n_u + n_p]`` (velocity DOFs first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu, spsolve
from skfem import (Basis, BilinearForm, ElementTetP1, ElementTetP2, ElementTriP1, ElementTriP2, ElementVector,
                   Functional, Mesh, MeshTet, MeshTri, asm)
from skfem.helpers import ddot, div, dot, grad, mul

from dsmpnn.errors import DsmpnnError

__all__ = ["ConvergenceError", "FlowSolution", "ConvectionAssembler", "taylor_hood_bases", "solve_navier_stokes",
           "require_converged", "l2_error"]

VelocityFn = Callable[[np.ndarray], np.ndarray]  # x [d, ...] -> u [d, ...]


class ConvergenceError(DsmpnnError, RuntimeError):
    """The nonlinear solver did not reach its tolerance: the sample must not be saved."""


@dataclass
class FlowSolution:
    """A discrete velocity–pressure pair and the history of the nonlinear solve.

    ``x`` is ``[n_u + n_p]``; ``residuals[k]`` is the free-DOF residual norm after iterate ``k`` (``residuals[0]``:
    the initial guess).
    """

    basis_u: Basis
    basis_p: Basis
    x: np.ndarray
    residuals: list[float] = field(default_factory=list)
    converged: bool = False

    @property
    def n_u(self) -> int:
        return int(self.basis_u.N)

    @property
    def u(self) -> np.ndarray:
        """Velocity DOFs ``[n_u]`` (P2, components interleaved per node)."""
        return self.x[: self.n_u]

    @property
    def p(self) -> np.ndarray:
        """Pressure DOFs ``[n_p]`` (P1: one per vertex)."""
        return self.x[self.n_u:]

    @property
    def residual(self) -> float:
        return self.residuals[-1]

    @property
    def relative_residual(self) -> float:
        return self.residuals[-1] / max(self.residuals[0], np.finfo(float).tiny)

    def vertex_velocity(self) -> np.ndarray:
        """Velocity at the mesh vertices ``[N, d]`` (the P2 nodal values there)."""
        return self.u[self.basis_u.nodal_dofs].T  # nodal_dofs [d, N]

    def vertex_pressure(self) -> np.ndarray:
        """Pressure at the mesh vertices ``[N]``."""
        return self.p[self.basis_p.nodal_dofs[0]]


def taylor_hood_bases(mesh: Mesh, intorder: int = 4) -> tuple[Basis, Basis]:
    """P2 vector velocity and P1 pressure bases on a ``MeshTri`` or ``MeshTet``."""
    if isinstance(mesh, MeshTri):
        p2, p1 = ElementTriP2(), ElementTriP1()
    elif isinstance(mesh, MeshTet):
        p2, p1 = ElementTetP2(), ElementTetP1()
    else:
        raise TypeError(f"Taylor–Hood needs a MeshTri or MeshTet, got {type(mesh).__name__}")
    return Basis(mesh, ElementVector(p2), intorder=intorder), Basis(mesh, p1, intorder=intorder)


@BilinearForm
def _viscous(u, v, w):
    return w.nu * ddot(grad(u), grad(v))


@BilinearForm
def _divergence(u, q, w):
    return -div(u) * q


@BilinearForm
def _convection(u, v, w):  # ((w·∇) u)·v, the Picard (Oseen) operator
    return dot(mul(grad(u), w.w), v)


@BilinearForm
def _convection_jacobian(u, v, w):  # ((w·∇) u + (u·∇) w)·v, the Newton linearisation
    return dot(mul(grad(u), w.w) + mul(grad(w.w), u), v)


class _SparseLU:
    """Direct solves of systems that share one sparsity pattern (Picard and Newton matrices of one mesh).

    The nested-dissection order of the pattern (``pymetis``) is computed on the first call; SuperLU then
    factorises the symmetrically permuted matrix in that order (``permc_spec="NATURAL"``), pivoting rows only
    when a diagonal entry is below 0.1 of its column's largest (the zero pressure block needs that).
    """

    def __init__(self) -> None:
        self.perm: np.ndarray | None = None

    def __call__(self, a: sp.spmatrix, rhs: np.ndarray) -> np.ndarray:
        a = a.tocsr()
        if self.perm is None:
            self.perm = _nested_dissection(a)
        p = self.perm
        try:
            lu = splu(a[p][:, p].tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.1)
        except RuntimeError:  # singular in this order: let SuperLU choose (raises again if truly singular)
            return spsolve(a.tocsc(), rhs)
        x = np.empty_like(rhs)
        x[p] = lu.solve(rhs[p])
        return x


def _nested_dissection(a: sp.csr_matrix) -> np.ndarray:
    """METIS nested-dissection permutation ``[n]`` of the pattern of ``a + a^T`` (identity without pymetis)."""
    try:
        import pymetis
    except ImportError:  # pragma: no cover - pymetis is a dependency
        return np.arange(a.shape[0])
    g = (abs(a) + abs(a.T)).tocsr()
    g.setdiag(0)
    g.eliminate_zeros()
    if hasattr(pymetis, "CSRAdjacency"):
        perm, _ = pymetis.nested_dissection(pymetis.CSRAdjacency(g.indptr, g.indices))
    else:  # pragma: no cover - older pymetis
        perm, _ = pymetis.nested_dissection(xadj=g.indptr, adjncy=g.indices)
    return np.asarray(perm, dtype=np.int64)


def solve_navier_stokes(
    mesh: Mesh,
    nu: float,
    dirichlet_facets: np.ndarray,
    velocity_bc: VelocityFn,
    convection: bool = True,
    pressure_pin: float | None = None,
    picard: int = 2,
    max_newton: int = 15,
    rtol: float = 1e-10,
    atol: float = 1e-13,
) -> FlowSolution:
    """Solve the steady (Navier–)Stokes problem; see the module docstring for the equations.

    Args:
        mesh: a ``MeshTri`` or ``MeshTet``.
        nu: kinematic viscosity (> 0).
        dirichlet_facets: indices of the boundary facets where ``u = velocity_bc(x)``; the other boundary facets
            are do-nothing outflows. With no outflow facet the pressure is defined up to a constant: give
            ``pressure_pin`` (the value the first vertex's pressure is set to).
        velocity_bc: ``x [d, ...] -> u [d, ...]``, interpolated at the P2 degrees of freedom.
        convection: ``False`` solves Stokes (one linear solve).
        picard, max_newton: Picard (Oseen) iterations before Newton, the first being the Stokes solve (at least
            one), and the most Newton iterations.

    The result has ``converged = False`` when the tolerance is not reached; callers decide (see
    :func:`require_converged`).
    """
    if nu <= 0:
        raise ValueError(f"nu must be > 0, got {nu}")
    basis_u, basis_p = taylor_hood_bases(mesh)
    n_u, n_p = basis_u.N, basis_p.N
    viscous = asm(_viscous, basis_u, nu=nu)  # [n_u, n_u]
    b = asm(_divergence, basis_u, basis_p)  # [n_p, n_u]: -∫ q div u

    fixed_u = basis_u.get_dofs(np.asarray(dirichlet_facets)).all()  # velocity DOFs on Dirichlet facets
    x = np.zeros(n_u + n_p)
    for comp, idx in enumerate(basis_u.split_indices()):  # interpolate g at the P2 DOF locations
        x[idx] = velocity_bc(basis_u.doflocs[:, idx])[comp]
    keep = np.zeros(n_u, dtype=bool)
    keep[fixed_u] = True
    x[:n_u][~keep] = 0.0
    fixed = fixed_u
    if pressure_pin is not None:
        pin = n_u + int(basis_p.nodal_dofs[0, 0])
        x[pin] = pressure_pin
        fixed = np.concatenate([fixed_u, [pin]])
    free = np.setdiff1d(np.arange(n_u + n_p), fixed)

    def system(velocity_block: sp.spmatrix) -> sp.csr_matrix:
        return sp.bmat([[velocity_block, b.T], [b, None]], format="csr")  # [n_u + n_p]^2 saddle point

    def residual(x: np.ndarray, jconv: sp.spmatrix | None) -> np.ndarray:
        # (u·∇)u = ½ J_conv(u) u, since (u·∇)u = ((u·∇)u + (u·∇)u)/2: one assembly serves R and J
        return system(viscous if jconv is None else viscous + 0.5 * jconv) @ x  # no body force

    linear = _SparseLU()
    conv = ConvectionAssembler(basis_u)
    jconv = conv.jacobian(x[:n_u]) if convection else None
    sol = FlowSolution(basis_u, basis_p, x, [float(np.linalg.norm(residual(x, jconv)[free]))])
    target = max(rtol * sol.residuals[0], atol)
    steps = ["picard"] * (max(picard, 1) if convection else 1) + ["newton"] * (max_newton if convection else 0)
    for k, kind in enumerate(steps):
        if sol.residuals[-1] <= target and k > 0:
            break
        x = x.copy()
        if kind == "picard":  # Oseen: A(x_k) x_{k+1} = 0 with the Dirichlet data; k = 0 is Stokes
            k_mat = viscous + conv.advection(x[:n_u]) if convection and k > 0 else viscous
            a = system(k_mat)[free]  # rows of the free DOFs
            x[free] = linear(a[:, free], -(a[:, fixed] @ x[fixed]))
        else:  # Newton: J dx = -R, dx = 0 on the fixed DOFs
            jac = system(viscous + jconv)
            x[free] += linear(jac[free][:, free], -residual(x, jconv)[free])
        jconv = conv.jacobian(x[:n_u]) if convection else None
        sol.x = x
        sol.residuals.append(float(np.linalg.norm(residual(x, jconv)[free])))
        if not np.isfinite(sol.residuals[-1]):
            break
    sol.converged = bool(np.isfinite(sol.residuals[-1]) and sol.residuals[-1] <= target)
    return sol


class ConvectionAssembler:
    """The convection matrices of a P2 vector basis, assembled from scalar P2 forms (about 10x faster).

    With vector DOF ``d a + i`` = component ``i`` of scalar DOF ``a`` (scikit-fem's interleaving) and scalar
    basis functions ``phi``:

    - advection ``((w·∇) u)·v`` = ``kron(C, I_d)``, ``C_ab = ∫ (w·∇phi_b) phi_a``;
    - Newton term ``((u·∇) w)·v`` = ``sum_ij kron(M^ij, E_ij)``, ``M^ij_ab = ∫ (∂_j w_i) phi_b phi_a``.

    Equal to assembling :data:`_convection` / :data:`_convection_jacobian` on the vector basis (tested).
    """

    def __init__(self, basis_u: Basis) -> None:
        self.basis_u = basis_u
        self.scalar = basis_u.split_bases()[0]
        self.dim = basis_u.mesh.dim()

    def advection(self, u: np.ndarray) -> sp.csr_matrix:
        w = self.basis_u.interpolate(u)
        return sp.kron(asm(_scalar_advection, self.scalar, w=w), sp.identity(self.dim), format="csr")

    def jacobian(self, u: np.ndarray) -> sp.csr_matrix:
        w = self.basis_u.interpolate(u)
        out = sp.kron(asm(_scalar_advection, self.scalar, w=w), sp.identity(self.dim), format="csr")
        for i in range(self.dim):
            for j in range(self.dim):
                unit = sp.coo_matrix(([1.0], ([i], [j])), shape=(self.dim, self.dim))
                out = out + sp.kron(asm(_weighted_mass, self.scalar, g=w.grad[i, j]), unit, format="csr")
        return out


@BilinearForm
def _scalar_advection(u, v, w):  # (w·∇u) v for scalar u, v
    return dot(w.w, grad(u)) * v


@BilinearForm
def _weighted_mass(u, v, w):
    return w.g * u * v


def require_converged(sol: FlowSolution, what: str) -> FlowSolution:
    """Return ``sol`` if converged, else raise :class:`ConvergenceError` naming ``what`` and the residuals."""
    if not sol.converged:
        hist = ", ".join(f"{r:.2e}" for r in sol.residuals)
        raise ConvergenceError(f"{what}: nonlinear solver did not converge (free-DOF residual norms {hist}; "
                               f"relative {sol.relative_residual:.2e})")
    return sol


def l2_error(basis: Basis, dofs: np.ndarray, exact: Callable[[np.ndarray], np.ndarray],
             subtract_mean: bool = False) -> float:
    """``|| u_h - u ||_{L2(Omega)}`` for a scalar or vector field ``u_h`` (DOFs of ``basis``).

    ``exact`` maps quadrature points ``x [d, E, Q]`` to ``[E, Q]`` (scalar) or ``[d, E, Q]`` (vector).
    ``subtract_mean`` compares ``u_h - u`` up to a constant (pressure of an enclosed flow).
    """
    uh = basis.interpolate(dofs)

    @Functional
    def diff(w):
        return w.uh - exact(np.asarray(w.x))

    shift = 0.0
    if subtract_mean:
        area = asm(Functional(lambda w: 1.0 + 0.0 * w.x[0]), basis)
        shift = asm(diff, basis, uh=uh) / area

    @Functional
    def sq(w):
        e = w.uh - exact(np.asarray(w.x)) - shift
        return dot(e, e) if e.ndim == w.x.ndim else e**2

    return float(np.sqrt(asm(sq, basis, uh=uh)))
