import numpy as np

from dsmpnn.data.sample import MeshSample
from dsmpnn.train.plots import plane_slice, plot_fields


def _cube_tets():
    """The unit cube split into 6 tetrahedra (Kuhn triangulation)."""
    corners = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
    tets = np.array([[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]])
    return corners, tets


def test_plane_slice_is_exact_for_linear_fields_and_covers_the_section():
    pos, tets = _cube_tets()
    for z0 in (0.3, 0.5, 0.75):
        xy, tris, (ia, ib, t) = plane_slice(pos, tets, z0)
        v = pos @ np.array([1.0, -2.0, 3.0]) + 0.5  # linear field
        vc = v[ia] + t * (v[ib] - v[ia])
        np.testing.assert_allclose(vc, xy @ np.array([1.0, -2.0]) + 3.0 * z0 + 0.5, atol=1e-12)
        p = xy[tris]
        d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        area = 0.5 * np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).sum()
        assert abs(area - 1.0) < 1e-12  # the section of the unit cube is the unit square
        assert len(np.unique(np.round(xy, 10), axis=0)) == len(xy)


def test_plot_fields_3d_and_zoom(tmp_path):
    pos, tets = _cube_tets()
    y = pos[:, :1] + pos[:, 2:]
    s = MeshSample(pos, np.zeros((8, 1)), y, tets, "tetra", name="cube")
    plot_fields(s, y + 0.1, ["u"], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    s2 = MeshSample(pos[:4, :2], np.zeros((4, 1)), y[:4], np.array([[0, 1, 3], [0, 3, 2]]), "triangle", name="sq")
    plot_fields(s2, y[:4], ["u"], tmp_path / "s.png", zoom=((0, 0.5), (0, 0.5)))
    assert (tmp_path / "s_zoom.png").is_file()
