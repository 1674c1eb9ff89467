"""`dsmpnn import mesh`: small meshes written by meshio (and by a second writer: VTK's own layout, hand-written in
tests/data/vtk_files.py, and the `vtk` package itself when it is installed) in every supported shape: 2D meshes
written as 3D, 3D meshes, mixed cell blocks, vector and tensor fields, cell data, XDMF time series, globs and
file lists; then import -> train -> predict -> read back."""

from __future__ import annotations

import json

import meshio
import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data import Dataset
from dsmpnn.data.mesh_import import (cell_measures, cell_to_point, component_suffixes, expand_files, import_mesh)
from dsmpnn.errors import DatasetError
from tests.data.vtk_files import write_vtu
from tests.helpers.cli_cases import TINY


def mixed_2d(nx: int = 5, ny: int = 4, z: float = 0.0) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Points ``[nx * ny, 3]`` of a grid on [0, 1]^2 at height z; the lower cell rows split into triangles, the
    upper ones quads."""
    x, y = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny))
    pts = np.column_stack([x.ravel(), y.ravel(), np.full(nx * ny, z)])
    node = np.arange(nx * ny).reshape(ny, nx)
    quads = np.stack([node[:-1, :-1], node[:-1, 1:], node[1:, 1:], node[1:, :-1]], -1).reshape(ny - 1, nx - 1, 4)
    low, high = quads[: (ny - 1) // 2].reshape(-1, 4), quads[(ny - 1) // 2:].reshape(-1, 4)
    tris = np.concatenate([low[:, [0, 1, 2]], low[:, [0, 2, 3]]])
    return pts, [("triangle", tris), ("quad", high)]


def mixed_3d() -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Three unit cubes along x: a hexahedron, two wedges, six tetrahedra (16 points)."""
    i, j, k = np.meshgrid(np.arange(4), np.arange(2), np.arange(2), indexing="ij")
    pts = np.column_stack([i.ravel(), j.ravel(), k.ravel()]).astype(float)

    def n(a, b, c):
        return a * 4 + b * 2 + c

    def cube(a):  # VTK hexahedron order: bottom (z = 0) counter-clockwise, then top
        return [n(a, 0, 0), n(a + 1, 0, 0), n(a + 1, 1, 0), n(a, 1, 0), n(a, 0, 1), n(a + 1, 0, 1), n(a + 1, 1, 1),
                n(a, 1, 1)]

    c1, c2 = cube(1), cube(2)
    wedges = [[c1[0], c1[1], c1[2], c1[4], c1[5], c1[6]], [c1[0], c1[2], c1[3], c1[4], c1[6], c1[7]]]
    tets = [[c2[a] for a in t] for t in ((0, 1, 2, 6), (0, 2, 3, 6), (0, 3, 7, 6), (0, 7, 4, 6), (0, 4, 5, 6),
                                          (0, 5, 1, 6))]
    return pts, [("hexahedron", np.array([cube(0)])), ("wedge", np.array(wedges)), ("tetra", np.array(tets))]


def fields(pts: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(pts)
    return {"U": rng.standard_normal((n, 3)), "p": rng.standard_normal(n), "T": rng.standard_normal((n, 1)),
            "S": rng.standard_normal((n, 9))}  # a 3x3 tensor as VTU stores it


def write(path, pts, blocks, point_data, cell_data=None, **kw):
    meshio.write(path, meshio.Mesh(pts, blocks, point_data=point_data, cell_data=cell_data or {}), **kw)
    return path


def samples(out) -> list:
    ds = Dataset(out)
    return [ds.load(f) for split in ds.manifest.splits for f in ds.split(split)]


def names(fields_) -> list[str]:
    return [f.name for f in fields_]


# --- units ------------------------------------------------------------------------------------------------------


def test_component_names():
    assert component_suffixes(()) == component_suffixes((1,)) == []
    assert component_suffixes((3,)) == ["x", "y", "z"]
    assert component_suffixes((3, 3)) == component_suffixes((9,)) == ["xx", "xy", "xz", "yx", "yy", "yz", "zx",
                                                                       "zy", "zz"]
    assert component_suffixes((6,)) == ["xx", "yy", "zz", "xy", "yz", "xz"]  # VTK's symmetric tensor
    assert component_suffixes((5,)) == ["0", "1", "2", "3", "4"]


def test_cell_measures_of_every_linear_type():
    pts, blocks = mixed_3d()
    got = {kind: cell_measures(pts, kind, cells).tolist() for kind, cells in blocks}
    assert got == {"hexahedron": pytest.approx([1.0]), "wedge": pytest.approx([0.5, 0.5]),
                   "tetra": pytest.approx([1 / 6] * 6)}
    pyramid = np.array([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0], [1, 1, 3.0]])
    assert cell_measures(pyramid, "pyramid", np.array([[0, 1, 2, 3, 4]])) == pytest.approx([4.0])  # b h / 3
    p2, b2 = mixed_2d(3, 3)
    assert cell_measures(p2, *b2[0]).tolist() == [0.125] * 4
    assert cell_measures(p2, *b2[1]).tolist() == [0.25, 0.25]


def test_cell_data_average_by_hand_2d_and_3d():
    # 2D: two triangles (area 1/2, values 1, 2) and a quad (area 1, value 3)
    pts = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [2, 1, 0.0]])
    blocks = [("triangle", np.array([[0, 1, 4], [0, 4, 3]])), ("quad", np.array([[1, 2, 5, 4]])),
              ("line", np.array([[0, 1]]))]  # a boundary edge: lower dimension, not counted
    avg = cell_to_point(pts, blocks, [np.array([[1.0], [2.0]]), np.array([[3.0]]), np.array([[100.0]])])
    # node 0: (1/2 * 1 + 1/2 * 2) / 1; node 1: (1/2 * 1 + 1 * 3) / 1.5; node 4: (1/2 + 1 + 3) / 2; node 2: 3
    np.testing.assert_allclose(avg[:, 0], [1.5, 3.5 / 1.5, 3.0, 2.0, 4.5 / 2, 3.0])
    # 3D: node (1, 0, 0) touches the hexahedron (volume 1, value 1) and both wedges (1/2 each, values 2 and 4)
    pts3, blocks3 = mixed_3d()
    vals = [np.array([[1.0]]), np.array([[2.0], [4.0]]), np.full((6, 1), 8.0)]
    avg3 = cell_to_point(pts3, blocks3, vals)
    node = 1 * 4 + 0 + 0
    assert avg3[node, 0] == pytest.approx((1 * 1 + 0.5 * 2 + 0.5 * 4) / 2)
    assert avg3[0, 0] == 1.0 and avg3[15, 0] == 8.0
    with pytest.raises(DatasetError, match="1 node\\(s\\) \\(the first: node 6\\) belong to no cell"):
        cell_to_point(np.vstack([pts, [[5, 5, 0]]]), blocks, [np.ones((2, 1)), np.ones((1, 1)), np.ones((1, 1))])


# --- importing ------------------------------------------------------------------------------------------------


def test_2d_mesh_written_as_3d_keeps_its_blocks_and_splits_vectors(tmp_path):
    pts, blocks = mixed_2d(z=0.25)  # a constant z that is not 0
    for k in range(3):
        write(tmp_path / f"m{k}.vtu", pts, blocks, fields(pts, k))
    m = import_mesh([tmp_path / "*.vtu"], tmp_path / "ds", "U,T", "p,U_z", splits=(1, 0, 0))
    assert m.dim == 2 and names(m.input_fields) == ["U_x", "U_y", "T"] and names(m.target_fields) == ["p", "U_z"]
    s = samples(tmp_path / "ds")[0]
    assert s.pos.shape == (20, 2) and [(k, c.tolist()) for k, c in s.cell_blocks] == [(k, c.tolist())
                                                                                     for k, c in blocks]
    f = fields(pts, 0)
    np.testing.assert_array_equal(s.x, np.column_stack([f["U"][:, :2], f["T"]]))
    np.testing.assert_array_equal(s.y, np.column_stack([f["p"], f["U"][:, 2]]))
    assert "x = [U_x, U_y, T]" in m.description


def test_3d_mesh_with_hex_wedge_tet_blocks_and_tensors(tmp_path):
    pts, blocks = mixed_3d()
    write(tmp_path / "a.vtu", pts, blocks, fields(pts))
    m = import_mesh([tmp_path / "a.vtu"], tmp_path / "ds", "U,T", ["S"], splits=(1, 0, 0))
    assert m.dim == 3 and names(m.input_fields) == ["U_x", "U_y", "U_z", "T"]
    assert names(m.target_fields) == [f"S_{a}{b}" for a in "xyz" for b in "xyz"]
    s = samples(tmp_path / "ds")[0]
    assert [k for k, _ in s.cell_blocks] == ["hexahedron", "wedge", "tetra"]
    f = fields(pts)
    np.testing.assert_array_equal(s.y, f["S"])
    m = import_mesh([tmp_path / "a.vtu"], tmp_path / "ds2", "S_xy,U_z", "p", splits=(1, 0, 0))
    assert names(m.input_fields) == ["S_xy", "U_z"]
    np.testing.assert_array_equal(samples(tmp_path / "ds2")[0].x, np.column_stack([f["S"][:, 1], f["U"][:, 2]]))


def test_blocks_of_one_type_are_merged(tmp_path):
    """Gmsh writes one block per physical group: blocks of one type become one, in first-appearance order."""
    pts, (tris, quads) = mixed_2d()
    blocks = [("quad", quads[1][:2]), tris, ("quad", quads[1][2:])]
    write(tmp_path / "a.vtu", pts, blocks, fields(pts))
    import_mesh([tmp_path / "a.vtu"], tmp_path / "ds", "U", "p", splits=(1, 0, 0))
    s = samples(tmp_path / "ds")[0]
    assert [(k, len(c)) for k, c in s.cell_blocks] == [("quad", len(quads[1])), ("triangle", len(tris[1]))]


def test_cell_data_average_through_the_importer(tmp_path):
    pts, blocks = mixed_2d(3, 3)  # triangles (0 1 4) (1 2 5) (0 4 3) (1 5 4) of area 1/8, quads of area 1/4
    write(tmp_path / "a.vtu", pts, blocks, {"p": np.zeros(9)},
          {"k": [np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0])]})
    with pytest.raises(DatasetError, match="field 'k' is cell data .* pass --cell-data average"):
        import_mesh([tmp_path / "a.vtu"], tmp_path / "ds", "k", "p", splits=(1, 0, 0))
    m = import_mesh([tmp_path / "a.vtu"], tmp_path / "ds", "k", "p", splits=(1, 0, 0), cell_data="average")
    s = samples(tmp_path / "ds")[0]
    # node 4 (the centre): triangles 1, 3, 4 and both quads: (1/8 (1 + 3 + 4) + 1/4 (5 + 6)) / (3/8 + 2/4)
    assert s.x[4, 0] == pytest.approx((0.125 * 8 + 0.25 * 11) / 0.875)
    assert s.x[0, 0] == pytest.approx(2.0)  # triangles 1 and 3, equal areas
    assert "cell data averaged onto the nodes (volume-weighted): k" in m.description


def test_xdmf_time_series_gives_one_sample_per_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # meshio's TimeSeriesWriter puts the .h5 in the working directory
    pts, blocks = mixed_2d()
    with meshio.xdmf.TimeSeriesWriter("run.xdmf") as w:
        w.write_points_cells(pts, blocks)
        for t in range(5):
            w.write_data(0.1 * t, point_data={"U": np.full((20, 3), float(t)), "p": np.full(20, -float(t))})
    m = import_mesh(["run.xdmf"], "ds", "U", "p", splits=(0.6, 0.2, 0.2), split_by="step")
    assert sum(len(v) for v in m.splits.values()) == 5 and len(m.splits["test"]) == 1
    got = sorted((s.name, s.x[0, 0], s.y[0, 0]) for s in samples("ds"))
    assert [g[1:] for g in got] == [(float(t), -float(t)) for t in range(5)]
    assert all(len(s.cell_blocks) == 2 for s in samples("ds"))
    m2 = import_mesh(["run.xdmf"], "ds2", "U", "p")  # split per file: one series, every step in train
    assert list(m2.splits) == ["train"] and len(m2.splits["train"]) == 5


def test_files_of_different_node_counts_from_globs_and_a_list(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for k, (nx, ny) in enumerate([(4, 3), (5, 4), (7, 5)]):
        pts, blocks = mixed_2d(nx, ny)
        write(tmp_path / "a" / "deep" / f"r{k}.vtu", pts, blocks, fields(pts, k))
    pts, blocks = mixed_2d(6, 6)
    write(tmp_path / "extra.vtk", pts, blocks, fields(pts, 9))
    (tmp_path / "files.txt").write_text("# the extra run\nextra.vtk\n\n")
    m = import_mesh([str(tmp_path / "a" / "**" / "*.vtu")], tmp_path / "ds", "U_x", "p", list_file=tmp_path /
                    "files.txt", splits=(0.5, 0.25, 0.25))
    assert sorted(s.num_nodes for s in samples(tmp_path / "ds")) == [12, 20, 35, 36]
    assert {k: len(v) for k, v in m.splits.items()} == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(DatasetError, match="extra.vtk: the file is named twice"):
        expand_files([str(tmp_path / "extra.vtk")], tmp_path / "files.txt")


@pytest.mark.parametrize("suffix, kw", [(".vtk", {}), (".vtk", {"binary": False}), (".msh", {"file_format": "gmsh22"}),
                                        (".xdmf", {}), (".vtu", {"binary": False})])
def test_other_formats_meshio_reads(tmp_path, suffix, kw):
    pts, blocks = mixed_2d()
    f = fields(pts)
    write(tmp_path / f"a{suffix}", pts, blocks, {"U": f["U"], "p": f["p"]}, **kw)
    m = import_mesh([tmp_path / f"a{suffix}"], tmp_path / "ds", "U", "p", splits=(1, 0, 0))
    s = samples(tmp_path / "ds")[0]
    assert m.dim == 2 and [k for k, _ in s.cell_blocks] == ["triangle", "quad"]
    np.testing.assert_allclose(s.x, f["U"][:, :2])


@pytest.mark.parametrize("fmt", ["appended64", "ascii"])
def test_a_vtu_in_vtk_s_own_layout(tmp_path, fmt):
    """A .vtu as VTK 9.7.2's XML writer lays it out (not meshio's writer): Float32 points, compressed appended
    base64 arrays or ascii, UInt8 cell types; 3D mixed blocks, a vector and cell data."""
    pts, blocks = mixed_3d()
    f = fields(pts)
    write_vtu(tmp_path / "v.vtu", pts, blocks, {"U": f["U"], "p": f["p"]},
              {"k": np.arange(9, dtype=np.float64)}, fmt=fmt)
    import_mesh([tmp_path / "v.vtu"], tmp_path / "ds", "U,k", "p", splits=(1, 0, 0), cell_data="average")
    s = samples(tmp_path / "ds")[0]
    assert [k for k, _ in s.cell_blocks] == ["hexahedron", "wedge", "tetra"]
    np.testing.assert_allclose(s.x[:, :3], f["U"], rtol=1e-15 if fmt != "ascii" else 1e-12)
    assert s.x[4, 3] == pytest.approx((1 * 0 + 0.5 * 1 + 0.5 * 2) / 2)  # node (1, 0, 0): hex 0, wedges 1, 2


def test_files_written_by_the_vtk_package(tmp_path):
    """The `vtk` wheel's own writers (XML .vtu with its defaults, legacy .vtk 5.1); skipped without the package."""
    pytest.importorskip("vtkmodules")
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkUnstructuredGrid
    from vtkmodules.vtkIOLegacy import vtkUnstructuredGridWriter
    from vtkmodules.vtkIOXML import vtkXMLUnstructuredGridWriter

    from tests.data.vtk_files import VTK_CELL_TYPES

    pts, blocks = mixed_2d()
    f = fields(pts)
    grid, points = vtkUnstructuredGrid(), vtkPoints()
    for p in pts:
        points.InsertNextPoint(*p)
    grid.SetPoints(points)
    for kind, cells in blocks:
        for c in cells:
            grid.InsertNextCell(VTK_CELL_TYPES[kind], len(c), [int(v) for v in c])
    for name in ("U", "p"):
        arr = numpy_to_vtk(np.ascontiguousarray(f[name]), deep=True)
        arr.SetName(name)
        grid.GetPointData().AddArray(arr)
    for writer, suffix in ((vtkXMLUnstructuredGridWriter(), ".vtu"), (vtkUnstructuredGridWriter(), ".vtk")):
        writer.SetFileName(str(tmp_path / f"vtk{suffix}"))
        writer.SetInputData(grid)
        assert writer.Write() == 1
    m = import_mesh([tmp_path / "vtk.vtu", tmp_path / "vtk.vtk"], tmp_path / "ds", "U", "p", splits=(1, 0, 0))
    assert m.dim == 2
    for s in samples(tmp_path / "ds"):
        assert [k for k, _ in s.cell_blocks] == ["triangle", "quad"]
        np.testing.assert_allclose(s.x, f["U"][:, :2])
        np.testing.assert_allclose(s.pos, pts[:, :2], atol=1e-6)  # Float32 points in the legacy file


def test_a_failed_import_leaves_nothing(tmp_path):
    pts, blocks = mixed_2d()
    write(tmp_path / "a.vtu", pts, blocks, fields(pts))
    f = fields(pts)
    del f["p"]
    write(tmp_path / "b.vtu", pts, blocks, f)
    with pytest.raises(DatasetError, match="b.vtu: no field 'p' \\(--targets\\); the file has point data"):
        import_mesh([tmp_path / "a.vtu", tmp_path / "b.vtu"], tmp_path / "ds", "U", "p", splits=(1, 0, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.vtu", "b.vtu"]


# --- end to end -------------------------------------------------------------------------------------------------


def test_import_train_predict_to_vtu_and_xdmf(tmp_path, capsys, monkeypatch):
    """Mixed-cell solver output -> import mesh -> train (1 epoch) -> predict .vtu and .xdmf -> read back."""
    monkeypatch.chdir(tmp_path)
    for k in range(4):
        pts, blocks = mixed_2d(8, 8)
        rng = np.random.default_rng(k)
        u = np.column_stack([np.sin(pts[:, 0] + k), np.cos(pts[:, 1]), np.zeros(64)])
        write(f"case{k}.vtu", pts, blocks, {"U": u, "p": u[:, 0] * u[:, 1] + 0.01 * rng.standard_normal(64)})
    assert main(["import", "mesh", "case*.vtu", "--out", "ds", "--inputs", "U", "--targets", "p",
                 "--split", "0.5,0.25,0.25", "--no-progress"]) == 0
    assert "imported 4 meshes (train 2, val 1, test 1; 2D; inputs U_x, U_y; targets p)" in capsys.readouterr().out
    assert main(["train", "--no-progress", "--data", "ds", "--out", "run", *TINY, "train.epochs=1"]) == 0
    for out in ("p.vtu", "p.xdmf"):
        assert main(["predict", "run", "--input", "case3.vtu", "--out", out]) == 0
        mesh = meshio.read(out)
        assert [(b.type, len(b.data)) for b in mesh.cells] == [("triangle", 42), ("quad", 28)]
        assert {"p", "p_true", "p_error", "U_x", "U_y"} <= set(mesh.point_data)
        assert np.all(np.isfinite(mesh.point_data["p"]))
    assert (tmp_path / "p.h5").is_file() and not list(tmp_path.glob(".p.xdmf.tmp*"))
    meta = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert [f["name"] for f in meta["input_fields"]] == ["U_x", "U_y"]
