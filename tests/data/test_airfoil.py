"""NACA shapes, gmsh meshes, and the airfoil flow generator at tiny size."""

import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data.airfoil import BOX, AirfoilCase, airfoil_flow, generate_airfoil
from dsmpnn.data.dataset import Dataset
from dsmpnn.data.meshing import airfoil_box_mesh
from dsmpnn.data.naca import naca_polygon, polygon_signed_distance, random_naca_code
from dsmpnn.data.navier_stokes import ConvergenceError


def _surfaces(poly):
    le = len(poly) // 2  # the leading edge (0, 0): n_side - 1 points after the trailing edge
    return poly[: le + 1][::-1], np.vstack([poly[le:], poly[:1]])  # upper, lower: both from LE to TE


def test_naca_4_digit_thickness_and_camber():
    poly = naca_polygon("0012", 200)
    upper, lower = _surfaces(poly)
    assert np.abs(upper[:, 1]).max() * 2 == pytest.approx(0.12, rel=2e-3)  # max thickness t at x ~ 0.3
    assert upper[np.argmax(upper[:, 1]), 0] == pytest.approx(0.30, abs=0.02)
    np.testing.assert_allclose(upper[:, 1], -lower[:, 1], atol=1e-12)  # symmetric
    poly = naca_polygon("2412", 200)
    upper, lower = _surfaces(poly)
    xs = np.linspace(0.05, 0.95, 50)
    camber = (np.interp(xs, upper[:, 0], upper[:, 1]) + np.interp(xs, lower[:, 0], lower[:, 1])) / 2
    assert camber.max() == pytest.approx(0.02, abs=1e-3) and xs[camber.argmax()] == pytest.approx(0.4, abs=0.05)


def test_naca_5_digit_and_outline():
    poly = naca_polygon("23012", 100)
    assert poly.shape == (198, 2)
    np.testing.assert_array_equal(poly[0], [1.0, 0.0])
    np.testing.assert_array_equal(poly[99], [0.0, 0.0])
    area = 0.5 * np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    assert area > 0  # counter-clockwise
    upper, lower = _surfaces(poly)
    xs = np.linspace(0.02, 0.98, 97)
    camber = (np.interp(xs, upper[:, 0], upper[:, 1]) + np.interp(xs, lower[:, 0], lower[:, 1])) / 2
    assert xs[camber.argmax()] == pytest.approx(0.15, abs=0.03)  # 230xx: max camber at 15 % chord
    with pytest.raises(ValueError, match="NACA code"):
        naca_polygon("2612x")
    rng = np.random.default_rng(0)
    for _ in range(20):
        naca_polygon(random_naca_code(rng), 10)


def test_signed_distance_to_square():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    pts = np.array([[0.5, 0.5], [2.0, 0.5], [0.5, -0.25], [2.0, 2.0], [0.1, 0.5]])
    np.testing.assert_allclose(polygon_signed_distance(pts, square), [-0.5, 1.0, 0.25, np.sqrt(2), -0.1])


def test_gmsh_mesh_is_deterministic_and_graded():
    poly = naca_polygon("0012", 20)
    p1, t1 = airfoil_box_mesh(poly, BOX, 0.05, 0.5)
    p2, t2 = airfoil_box_mesh(poly, BOX, 0.05, 0.5)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(t1, t2)
    edge = np.linalg.norm(p1[t1[:, 0]] - p1[t1[:, 1]], axis=1)
    near = np.abs(polygon_signed_distance(p1[t1[:, 0]], poly)) < 0.1
    assert edge[near].mean() < 0.5 * edge[~near].mean()


def test_airfoil_flow_sample():
    sample, sol = airfoil_flow(AirfoilCase("2412", 5.0, 1.0), "low")
    assert sol.converged and sol.relative_residual < 1e-10
    n = sample.num_nodes
    assert sample.x.shape == (n, 5) and sample.y.shape == (n, 3) and sample.cell_type == "triangle"
    on_airfoil = np.linalg.norm(sample.x[:, 3:], axis=1) > 0
    np.testing.assert_allclose(np.linalg.norm(sample.x[on_airfoil, 3:], axis=1), 1.0)
    assert np.all(sample.x[on_airfoil, 2] < 1e-9) and np.all(sample.x[~on_airfoil, 2] > 0)  # sdf 0 on the wall
    np.testing.assert_allclose(sample.y[on_airfoil, :2], 0.0, atol=1e-12)  # no slip
    # normals point out of the fluid, into the airfoil: towards the chord line's inside (centroid test)
    centre = np.array([0.4, 0.02])
    inward = ((centre - sample.pos[on_airfoil]) * sample.x[on_airfoil, 3:]).sum(1)
    assert np.mean(inward > 0) > 0.9
    left = np.isclose(sample.pos[:, 0], BOX[0])
    np.testing.assert_allclose(sample.y[left, :2], np.broadcast_to([np.cos(np.radians(5)), np.sin(np.radians(5))], (left.sum(), 2)), atol=1e-12)


def test_generate_airfoil_dataset_and_refusal(tmp_path, capsys):
    m, report = generate_airfoil(tmp_path / "d", 2, "low", seed=1, splits=(0.5, 0.5, 0.0), progress=False)
    assert report.written == 2 and max(report.residuals) < 1e-8 and "residual max" in report.summary()
    ds = Dataset(tmp_path / "d")
    assert [f.name for f in ds.manifest.input_fields] == ["inlet_u", "inlet_v", "sdf", "normal_x", "normal_y"]
    assert ds.load_split("train")[0].y.shape[1] == 3
    with pytest.raises(ConvergenceError, match=r"only 0 of 1 samples converged in 2 attempts \(2 refused\)"):
        generate_airfoil(tmp_path / "e", 1, "low", seed=1, max_newton=1, max_attempts=2, progress=False)
    assert "skipped attempt 0" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_cli_generate_airfoil_high(tmp_path, capsys):
    out = tmp_path / "hi"
    assert main(["generate", "airfoil", "--n", "1", "--fidelity", "high", "--out", str(out), "--seed", "2",
                 "--split", "1,0,0", "--no-progress"]) == 0
    assert "wrote airfoil (high)" in capsys.readouterr().out
    assert Dataset(out).load_split("train")[0].num_nodes > 2000
