"""Darcy generator: solver convergence on a manufactured solution, the GRF, and the written dataset."""

from pathlib import Path

import numpy as np
import pytest

from dsmpnn.data.darcy import A_HIGH, A_LOW, coefficient_features, darcy_sample, generate_darcy, grf, sample_rng, solve_darcy
from dsmpnn.data.dataset import Dataset
from dsmpnn.data.grid import grid_positions
from dsmpnn.errors import ConfigError, DatasetError


def manufactured(h: int, w: int):
    """a = 1 + x^2 + y, u = sin(pi x) sin(pi y), f = -div(a grad u) on an H x W grid (axis 0 = y)."""
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))  # [H, W], axis 0 along y
    a = 1 + x**2 + y
    u = np.sin(np.pi * x) * np.sin(np.pi * y)
    ux = np.pi * np.cos(np.pi * x) * np.sin(np.pi * y)
    uy = np.pi * np.sin(np.pi * x) * np.cos(np.pi * y)
    f = -(2 * x * ux + 1.0 * uy - 2 * np.pi**2 * a * u)  # a_x u_x + a_y u_y + a (u_xx + u_yy), negated
    return a, f, u


@pytest.mark.numerics
@pytest.mark.parametrize("mean", ["harmonic", "arithmetic"])
def test_solver_converges_at_second_order(mean):
    sizes = [17, 33, 65, 129]
    errors = []
    for s in sizes:
        a, f, u = manufactured(s, s)
        errors.append(np.abs(solve_darcy(a, f, mean=mean) - u).max())
    slope = np.polyfit(np.log([1 / (s - 1) for s in sizes]), np.log(errors), 1)[0]
    assert abs(slope - 2) < 0.15, (slope, errors)
    assert errors[-1] < 1e-4


def test_solver_orientation_on_rectangular_grid():
    # H != W gives h_x != h_y: swapping the axes would make the error O(1), not O(h^2)
    a, f, u = manufactured(65, 33)
    assert np.abs(solve_darcy(a, f) - u).max() < 2e-3


def test_solver_constant_coefficient_matches_dense_five_point_laplacian():
    s = 6
    a = np.full((s, s), 2.0)
    h = 1 / (s - 1)
    n = s - 2
    lap1 = (np.diag(np.full(n, 2.0)) - np.diag(np.ones(n - 1), 1) - np.diag(np.ones(n - 1), -1)) / h**2
    dense = 2.0 * (np.kron(np.eye(n), lap1) + np.kron(lap1, np.eye(n)))
    rng = np.random.default_rng(0)
    f = rng.standard_normal((s, s))
    expected = np.linalg.solve(dense, f[1:-1, 1:-1].ravel()).reshape(n, n)
    u = solve_darcy(a, f)
    np.testing.assert_allclose(u[1:-1, 1:-1], expected, rtol=1e-12, atol=1e-14)
    assert np.all(u[0] == 0) and np.all(u[-1] == 0) and np.all(u[:, 0] == 0) and np.all(u[:, -1] == 0)


def test_solver_rejects_bad_coefficient():
    with pytest.raises(DatasetError, match="finite and > 0"):
        solve_darcy(np.zeros((5, 5)))
    with pytest.raises(DatasetError, match=r"shape \(2, 5\)"):
        solve_darcy(np.ones((2, 5)))


def test_grf_is_seeded_and_centred():
    a = grf(32, np.random.default_rng(3))
    assert a.shape == (32, 32)
    np.testing.assert_array_equal(a, grf(32, np.random.default_rng(3)))
    assert not np.array_equal(a, grf(32, np.random.default_rng(4)))
    assert abs(a.mean()) < 1e-12  # the constant mode is removed
    assert 0.05 < a.std() < 1.0


def test_darcy_sample_coefficient_and_solution():
    a, u = darcy_sample(32, sample_rng(0, 0))
    assert set(np.unique(a)) == {A_LOW, A_HIGH}
    a2, u2 = darcy_sample(32, sample_rng(0, 0))
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(u, u2)
    assert not np.array_equal(a, darcy_sample(32, sample_rng(0, 1))[0])
    for edge in (u[0], u[-1], u[:, 0], u[:, -1]):
        assert np.all(edge == 0)
    assert np.all(u[1:-1, 1:-1] > 0)  # maximum principle, f = 1 > 0


def test_generate_darcy_writes_a_readable_dataset(tmp_path):
    out = tmp_path / "darcy"
    m = generate_darcy(out, n=6, resolution=16, seed=1, progress=False)
    assert {k: len(v) for k, v in m.splits.items()} == {"train": 4, "val": 1, "test": 1}
    ds = Dataset(out)
    assert [f.name for f in ds.manifest.input_fields] == ["a", "boundary", "a_smooth", "a_smooth_dx", "a_smooth_dy"]
    assert [f.name for f in ds.manifest.target_fields] == ["u"]
    train = ds.load_split("train")
    assert len(train) == 4
    s = train[0]
    assert s.pos.shape == (256, 2) and s.x.shape == (256, 5) and s.y.shape == (256, 1)
    assert s.cells.shape == (225, 4) and s.cell_type == "quad"
    np.testing.assert_array_equal(s.pos, grid_positions(16, 16))
    bnd = s.x[:, 1] == 1
    assert bnd.sum() == 4 * 15
    np.testing.assert_array_equal(bnd, (s.pos.min(axis=1) == 0) | (s.pos.max(axis=1) == 1))
    assert np.all(s.y[bnd, 0] == 0) and np.all(s.y[~bnd, 0] > 0)
    assert set(np.unique(s.x[:, 0])) == {A_LOW, A_HIGH}

    # sample k depends only on (seed, k): it is the same in a run with more samples
    k = int(Path(ds.split("val")[0]).stem.rsplit("_", 1)[1])
    a, u = darcy_sample(16, sample_rng(1, k))
    val = ds.load_split("val")[0]
    np.testing.assert_array_equal(val.x[:, 0], a.ravel())
    np.testing.assert_allclose(val.y[:, 0], u.ravel())


def test_coefficient_features_smooth_and_gradient():
    """a_smooth of a linear field is the field (the Gaussian preserves it away from the edges); the gradient
    columns are its derivatives."""
    s = 33
    yy, xx = np.meshgrid(np.linspace(0, 1, s), np.linspace(0, 1, s), indexing="ij")
    feats = coefficient_features(3 + 2 * xx - yy)
    inner = (slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(feats[..., 0][inner], (3 + 2 * xx - yy)[inner], atol=1e-12)
    np.testing.assert_allclose(feats[..., 1][inner], 2.0, atol=1e-9)
    np.testing.assert_allclose(feats[..., 2][inner], -1.0, atol=1e-9)


@pytest.mark.parametrize("n, res", [(0, 16), (3, 2)])
def test_generate_darcy_rejects_bad_options(tmp_path, n, res):
    with pytest.raises(ConfigError):
        generate_darcy(tmp_path / "d", n=n, resolution=res, progress=False)
    assert not (tmp_path / "d").exists()
