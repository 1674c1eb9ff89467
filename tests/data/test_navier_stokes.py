"""Taylor–Hood Navier–Stokes solver: convergence orders on Kovasznay flow, exactness on Poiseuille flow."""

import numpy as np
import pytest
from skfem import MeshTet, MeshTri, asm

from dsmpnn.data.navier_stokes import (ConvectionAssembler, ConvergenceError, _convection, _convection_jacobian,
                                       l2_error, require_converged, solve_navier_stokes, taylor_hood_bases)

RE = 40.0
LAM = RE / 2 - np.sqrt(RE**2 / 4 + 4 * np.pi**2)


def kovasznay_u(x):
    """Kovasznay (1948) flow at Re = 40: an exact steady Navier–Stokes solution with nu = 1/Re."""
    e = np.exp(LAM * x[0])
    return np.stack([1 - e * np.cos(2 * np.pi * x[1]), LAM / (2 * np.pi) * e * np.sin(2 * np.pi * x[1])])


def kovasznay_p(x):
    return -0.5 * np.exp(2 * LAM * x[0])


@pytest.mark.numerics
def test_kovasznay_convergence_orders():
    hs, eu, ep = [], [], []
    for n in (8, 16, 32):
        mesh = MeshTri.init_tensor(np.linspace(-0.5, 1.0, n + 1), np.linspace(-0.5, 1.5, n + 1))
        sol = solve_navier_stokes(mesh, 1 / RE, mesh.boundary_facets(), kovasznay_u, pressure_pin=0.0)
        assert sol.converged and sol.relative_residual < 1e-10, sol.residuals
        hs.append(1 / n)
        eu.append(l2_error(sol.basis_u, sol.u, kovasznay_u))
        ep.append(l2_error(sol.basis_p, sol.p, kovasznay_p, subtract_mean=True))
    order_u = np.polyfit(np.log(hs), np.log(eu), 1)[0]
    order_p = np.polyfit(np.log(hs), np.log(ep), 1)[0]
    # measured: u 3.03 (P2: 3), p 2.49 fitted over h = 1/8..1/32, 2.22 on the last halving (P1: 2)
    assert abs(order_u - 3) < 0.15, (order_u, eu)
    assert order_p > 1.9, (order_p, ep)
    assert eu[-1] < 5e-4


def _poiseuille(dim):
    """u = (y (1 - y), 0[, 0]), p = 2 nu (L - x): exact for NS with do-nothing outflow at x = L (P2/P1 exact)."""
    nu, length = 0.1, 2.0

    def u(x):
        out = np.zeros_like(x)
        out[0] = x[1] * (1 - x[1])
        return out

    def p(x):
        return 2 * nu * (length - x[0])

    return nu, length, u, p


@pytest.mark.numerics
@pytest.mark.parametrize("dim, convection", [(2, True), (3, False), (3, True)])
def test_poiseuille_is_exact_with_do_nothing_outflow(dim, convection):
    nu, length, u, p = _poiseuille(dim)
    if dim == 2:
        mesh = MeshTri.init_tensor(np.linspace(0, length, 7), np.linspace(0, 1, 5))
    else:
        mesh = MeshTet.init_tensor(np.linspace(0, length, 4), np.linspace(0, 1, 3), np.linspace(0, 1, 3))
    facets = mesh.boundary_facets()
    outlet = np.isclose(mesh.p[0, mesh.facets[:, facets]].mean(axis=0), length)
    sol = solve_navier_stokes(mesh, nu, facets[~outlet], u, convection=convection)
    assert sol.converged
    assert l2_error(sol.basis_u, sol.u, u) < 1e-11
    assert l2_error(sol.basis_p, sol.p, p) < 1e-11
    np.testing.assert_allclose(sol.vertex_velocity(), u(mesh.p).T, atol=1e-11)
    np.testing.assert_allclose(sol.vertex_pressure(), p(mesh.p), atol=1e-11)


@pytest.mark.parametrize("mesh", [MeshTri.init_sqsymmetric().refined(1),
                                  MeshTet.init_tensor(*[np.linspace(0, 1, 3)] * 3)], ids=["tri", "tet"])
def test_scalar_convection_assembly_equals_vector_forms(mesh):
    basis_u, _ = taylor_hood_bases(mesh)
    u = np.random.default_rng(0).standard_normal(basis_u.N)
    w = basis_u.interpolate(u)
    fast = ConvectionAssembler(basis_u)
    scale = abs(asm(_convection_jacobian, basis_u, w=w)).max()
    assert abs(fast.advection(u) - asm(_convection, basis_u, w=w)).max() < 1e-13 * scale
    assert abs(fast.jacobian(u) - asm(_convection_jacobian, basis_u, w=w)).max() < 1e-13 * scale


def test_unconverged_solve_is_flagged_and_refused():
    mesh = MeshTri.init_tensor(np.linspace(-0.5, 1.0, 9), np.linspace(-0.5, 1.5, 9))
    sol = solve_navier_stokes(mesh, 1 / RE, mesh.boundary_facets(), kovasznay_u, pressure_pin=0.0, picard=1,
                              max_newton=1)
    assert not sol.converged and len(sol.residuals) == 3
    with pytest.raises(ConvergenceError, match="kovasznay: nonlinear solver did not converge"):
        require_converged(sol, "kovasznay")
