"""`dsmpnn import mesh` and `dsmpnn predict` on mesh files: each bad input exits 2 with one line naming the file and
field (or option) and what was expected, and leaves nothing behind (see :func:`tests.helpers.cli_cases.run_case`)."""

from __future__ import annotations

from collections.abc import Callable

import meshio
import numpy as np
import pytest

from tests.data.test_mesh_import import fields, mixed_2d, mixed_3d
from tests.helpers.cli_cases import Case, World, run_case

IMPORT = ["import", "mesh", "{tmp}/m*.vtu", "--out", "{tmp}/o", "--inputs", "U", "--targets", "p", "--no-progress"]


def imp(inputs: str, targets: str) -> list[str]:
    """IMPORT with other --inputs and --targets."""
    return [*IMPORT[:6], inputs, "--targets", targets, "--no-progress"]


def meshes(count: int = 3, change: Callable[[int, dict], None] | None = None, cell_data: dict | None = None,
           three_d: int | None = None) -> Callable[[World], dict]:
    """``count`` files {tmp}/m0.vtu ... with point data U [N, 3], p, T, S [N, 9]; ``change(k, point_data)`` edits
    file k's; file ``three_d`` is a 3D mesh."""
    def setup(w: World) -> dict:
        for k in range(count):
            pts, blocks = mixed_3d() if k == three_d else mixed_2d()
            data = fields(pts, k)
            if change is not None:
                change(k, data)
            meshio.write(w.tmp / f"m{k}.vtu", meshio.Mesh(pts, blocks, point_data=data, cell_data=cell_data or {}))
        return {"last": str(w.tmp / f"m{count - 1}.vtu")}
    return setup


def drop_in_last(name: str) -> Callable[[int, dict], None]:
    def change(k: int, data: dict) -> None:
        if k == 2:
            del data[name]
    return change


def two_components_in_last(k: int, data: dict) -> None:
    if k == 2:
        data["U"] = data["U"][:, :2]


def nan_in_first(k: int, data: dict) -> None:
    if k == 0:
        data["p"][3] = np.nan


def garbage_last(w: World) -> dict:
    meshes(2)(w)
    (w.tmp / "m2.vtu").write_bytes(b"<VTKFile type='UnstructuredGrid'> not a mesh \xff")
    return {"last": str(w.tmp / "m2.vtu")}


def out_is_a_file(w: World) -> dict:
    meshes(2)(w)
    (w.tmp / "o").write_text("keep me")
    return {}


def list_with_missing(w: World) -> dict:
    meshes(2)(w)
    (w.tmp / "files.txt").write_text("m0.vtu\nmissing.vtu\n")
    return {}


def polygons(w: World) -> dict:
    pts, _ = mixed_2d()
    meshio.write(w.tmp / "m0.vtu", meshio.Mesh(pts, [("polygon", np.array([[0, 1, 6, 10, 5]]))],
                                               point_data=fields(pts)))
    return {}


def run_inputs(w: World) -> list[str]:
    """The input fields of the shared run (the Darcy set's)."""
    from dsmpnn.data import Dataset

    return [f.name for f in Dataset(w.data).manifest.input_fields]


def time_series(w: World) -> dict:
    import os

    pts, blocks = mixed_2d()
    cwd = os.getcwd()
    os.chdir(w.tmp)  # meshio's TimeSeriesWriter puts the .h5 in the working directory
    try:
        with meshio.xdmf.TimeSeriesWriter("ts.xdmf") as writer:
            writer.write_points_cells(pts, blocks)
            for t in range(3):
                writer.write_data(t, point_data={n: np.zeros(20) for n in run_inputs(w)})
    finally:
        os.chdir(cwd)
    return {}


def predict_mesh(change: Callable[[dict], None] | None = None,
                 cell: bool = False) -> Callable[[World], dict]:
    """{tmp}/m.vtu on a mixed mesh with the shared run's inputs a, boundary (and target u) as point data."""
    def setup(w: World) -> dict:
        pts, blocks = mixed_2d()
        data = {**{n: np.zeros(20) for n in run_inputs(w)}, "a": np.ones(20), "u": np.zeros(20)}
        if change is not None:
            change(data)
        cd = {}
        if cell:
            del data["a"]
            cd = {"a": [np.ones(len(c)) for _, c in blocks]}
        meshio.write(w.tmp / "m.vtu", meshio.Mesh(pts, blocks, point_data=data, cell_data=cd))
        return {}
    return setup


PREDICT = ["predict", "{run}", "--input", "{tmp}/m.vtu", "--out", "{tmp}/p.xdmf"]
NOTHING = ["{tmp}/o"]

CASES = {
    "field missing in one of several files": Case(IMPORT, ["{last}: no field 'p' (--targets); the file has point "
                                                           "data ['S', 'T', 'U']"], NOTHING,
                                                  meshes(3, drop_in_last("p"))),
    "field of another shape in one file": Case(IMPORT, ["{last}: field 'U' has shape (20, 2), expected (20, 3) as in",
                                                        "m0.vtu (U_x, U_y, U_z)"], NOTHING,
                                               meshes(3, two_components_in_last)),
    "cell data refused": Case(imp("k", "p"), ["m0.vtu: field 'k' is cell data (one value per "
                                                                     "cell)", "pass --cell-data average"], NOTHING,
                              meshes(2, cell_data={"k": [np.ones(8), np.ones(8)]})),
    "garbage file": Case(IMPORT, ["{last}: cannot read the mesh file (meshio:"], NOTHING, garbage_last),
    "no file matches the glob": Case(IMPORT, ["{tmp}/m*.vtu: no file matches this pattern (FILE)"], NOTHING),
    "unknown component": Case(imp("U_w", "p"), ["m0.vtu: --inputs names 'U_w', but field 'U' "
                                                                        "has components U_x, U_y, U_z"], NOTHING,
                              meshes(2)),
    "unknown field": Case(imp("rho", "p"), ["m0.vtu: no field 'rho' (--inputs); the file "
                                                                    "has point data ['S', 'T', 'U', 'p']"], NOTHING,
                          meshes(2)),
    "--out exists as a file": Case(IMPORT, ["{tmp}/o: output path exists and is not a directory"], ["{tmp}/o"],
                                   out_is_a_file),
    "a 3D mesh among 2D ones": Case(IMPORT, ["{last}: the mesh is 3D, expected 2D as", "m0.vtu"], NOTHING,
                                    meshes(3, three_d=2)),
    "NaN in a field": Case(IMPORT, ["m0.vtu: point data 'p' has 1 NaN/Inf values"], NOTHING,
                           meshes(2, nan_in_first)),
    "a column both input and target": Case(imp("U", "U_y"), ["--inputs and --targets both "
                                                                                     "take ['U_y']"], NOTHING,
                                           meshes(2)),
    "list names a missing file": Case(["import", "mesh", "--list", "{tmp}/files.txt", "--out", "{tmp}/o", "--inputs",
                                       "U", "--targets", "p"], ["missing.vtu: mesh file does not exist "
                                                                "({tmp}/files.txt:2)"], NOTHING, list_with_missing),
    "the same file twice": Case(["import", "mesh", "{tmp}/m0.vtu", "{tmp}/m*.vtu", "--out", "{tmp}/o", "--inputs",
                                 "U", "--targets", "p"], ["m0.vtu: the file is named twice"], NOTHING, meshes(2)),
    "cells a dataset cannot store": Case(IMPORT, ["m0.vtu: cell block 0 has type 'polygon', which a dataset cannot "
                                                  "store"], NOTHING, polygons),
    "no file at all": Case(["import", "mesh", "--out", "{tmp}/o", "--inputs", "U", "--targets", "p"],
                           ["no mesh file given"], NOTHING),
    # predict on mesh files
    "predict: an input field missing": Case(PREDICT, ["{tmp}/m.vtu: no field 'boundary' (the model's input field)"],
                                            ["{tmp}/p.xdmf", "{tmp}/p.h5"],
                                            predict_mesh(lambda d: d.pop("boundary"))),
    "predict: cell data refused": Case(PREDICT, ["{tmp}/m.vtu: field 'a' is cell data", "--cell-data average"],
                                       ["{tmp}/p.xdmf", "{tmp}/p.h5"], predict_mesh(cell=True)),
    "predict: time series without --step": Case(["predict", "{run}", "--input", "{tmp}/ts.xdmf", "--out",
                                                 "{tmp}/p.vtu"], ["{tmp}/ts.xdmf: the file is a time series of 3 "
                                                                  "steps; choose one with --step K (0 to 2)"],
                                                ["{tmp}/p.vtu"], time_series),
    "predict: --step beyond the series": Case(["predict", "{run}", "--input", "{tmp}/ts.xdmf", "--out",
                                               "{tmp}/p.vtu", "--step", "3"], ["{tmp}/ts.xdmf: --step is 3, but the "
                                                                               "file has 3 step(s)"],
                                              ["{tmp}/p.vtu"], time_series),
    "predict: output suffix": Case(["predict", "{run}", "--input", "{tmp}/m.vtu", "--out", "{tmp}/p.vtk"],
                                   ["{tmp}/p.vtk: output must end in .npz, .vtu or .xdmf"], ["{tmp}/p.vtk"],
                                   predict_mesh()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_mesh_input_exits_2_with_one_line_and_writes_nothing(name, shared, tmp_path, capsys):
    run_case(CASES[name], World(*shared, tmp_path), capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".o.tmp", ".p."))], "temporary files left"


def test_predict_time_series_step_and_cell_data_average(shared, tmp_path, capsys):
    from dsmpnn.cli import main

    w = World(*shared, tmp_path)
    time_series(w)
    assert main(["predict", str(w.run), "--input", str(tmp_path / "ts.xdmf"), "--step", "2", "--out",
                 str(tmp_path / "p.vtu")]) == 0
    assert {"u", "a", "boundary"} <= set(meshio.read(tmp_path / "p.vtu").point_data)
    predict_mesh(cell=True)(w)
    assert main(["predict", str(w.run), "--input", str(tmp_path / "m.vtu"), "--cell-data", "average", "--out",
                 str(tmp_path / "q.xdmf")]) == 0
    out = meshio.read(tmp_path / "q.xdmf")
    assert [b.type for b in out.cells] == ["triangle", "quad"]
    np.testing.assert_allclose(out.point_data["a"], 1.0)  # the average of ones
