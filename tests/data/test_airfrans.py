"""AirfRANS import: the .vtp reader on every encoding, a case folder written here in the AirfRANS layout."""

import json
import math

import meshio
import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data.airfrans import import_airfrans, parse_case_name, read_case
from dsmpnn.data.dataset import Dataset
from dsmpnn.data.vtp import read_vtp
from dsmpnn.errors import ConfigError, DatasetError
from tests.data.vtk_files import write_vtp

CASE = "airFoil2D_SST_43.597_5.932_3.551_3.1_1.0_18.252"


@pytest.mark.parametrize("fmt, compressed, header, joint", [
    ("ascii", False, "UInt32", False),
    ("binary", False, "UInt32", False),
    ("binary", False, "UInt32", True),
    ("binary", False, "UInt64", False),
    ("binary", True, "UInt32", False),
    ("binary", True, "UInt64", False),
    ("raw", False, "UInt32", False),
    ("raw", True, "UInt64", False),
    ("appended64", False, "UInt32", False),
    ("appended64", True, "UInt32", False),
])
def test_read_vtp_encodings(tmp_path, fmt, compressed, header, joint):
    rng = np.random.default_rng(0)
    pts = rng.random((23, 3)).astype(np.float32).astype(np.float64)
    data = {"p": rng.random(23), "Normals": rng.random((23, 3)).astype(np.float32), "id": np.arange(23, dtype=np.int32)}
    write_vtp(tmp_path / "a.vtp", pts, data, fmt, compressed, header, joint)
    points, got = read_vtp(tmp_path / "a.vtp")
    np.testing.assert_array_equal(points, pts)
    np.testing.assert_array_equal(got["p"], data["p"])
    np.testing.assert_array_equal(got["Normals"], data["Normals"])
    np.testing.assert_array_equal(got["id"], data["id"])
    assert got["Normals"].shape == (23, 3) and got["p"].shape == (23,)


def test_read_vtp_errors(tmp_path):
    pts = np.zeros((3, 3))
    write_vtp(tmp_path / "a.vtp", pts, {"p": np.ones(3)}, "binary", compressed=True)
    text = (tmp_path / "a.vtp").read_text().replace("vtkZLibDataCompressor", "vtkLZ4DataCompressor")
    (tmp_path / "lz4.vtp").write_text(text)
    with pytest.raises(DatasetError, match=r"lz4\.vtp: compressor 'vtkLZ4DataCompressor' is not supported"):
        read_vtp(tmp_path / "lz4.vtp")
    (tmp_path / "u.vtp").write_text((tmp_path / "a.vtp").read_text().replace("PolyData", "UnstructuredGrid"))
    with pytest.raises(DatasetError, match="expected 'PolyData'"):
        read_vtp(tmp_path / "u.vtp")
    write_vtp(tmp_path / "b.vtp", pts, {"p": np.ones(3)}, "binary")
    text = (tmp_path / "b.vtp").read_text()
    start = text.index('Name="p"')
    cut = text.index("</DataArray>", start)
    (tmp_path / "t.vtp").write_text(text[:cut - 6] + text[cut:])  # truncate the base64 of 'p'
    with pytest.raises(DatasetError, match=r"t\.vtp: cannot decode array 'p'"):
        read_vtp(tmp_path / "t.vtp")
    with pytest.raises(DatasetError, match="does not exist"):
        read_vtp(tmp_path / "missing.vtp")


def write_case(root, name=CASE, drop=None, shift_surface=0.0, vtp_fmt="binary"):
    """A tiny AirfRANS case: a triangulated box, a 'surface' of 6 nodes on y = 0, fields as AirfRANS has them."""
    nx, ny = 9, 5
    x, y = np.meshgrid(np.linspace(-1, 2, nx), np.linspace(-1, 1, ny))
    pts = np.column_stack([x.ravel(), y.ravel(), np.zeros(nx * ny)])  # [45, 3], z = 0 as in AirfRANS
    node = np.arange(nx * ny).reshape(ny, nx)
    quads = np.stack([node[:-1, :-1], node[:-1, 1:], node[1:, 1:], node[1:, :-1]], -1).reshape(-1, 4)
    rng = np.random.default_rng(1)
    n = len(pts)
    fields = {"U": rng.standard_normal((n, 3)), "p": rng.standard_normal(n), "nut": rng.random(n),
              "implicit_distance": rng.standard_normal(n)}
    if drop:
        fields.pop(drop)
    case = root / name
    case.mkdir(parents=True)
    meshio.write(case / f"{name}_internal.vtu", meshio.Mesh(pts, [("quad", quads)], point_data=fields))
    surf = node[2, 2:8]  # 6 nodes on y = 0, written in shuffled order
    order = rng.permutation(len(surf))
    normals = rng.standard_normal((len(surf), 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    surf_pts = pts[surf[order]] + [0.0, shift_surface, 0.0]
    write_vtp(case / f"{name}_aerofoil.vtp", surf_pts, {"U": np.zeros((6, 3)), "p": rng.random(6), "nut": np.zeros(6),
                                                      "Normals": normals}, vtp_fmt)
    return pts, fields, surf[order], normals


def test_read_case_features(tmp_path):
    pts, fields, surf, normals = write_case(tmp_path, vtp_fmt="raw")
    s = read_case(tmp_path / CASE)
    speed, aoa = 43.597, 5.932
    assert s.x.shape == (45, 5) and s.y.shape == (45, 4) and s.cell_type == "quad"
    np.testing.assert_allclose(s.pos, pts[:, :2])
    np.testing.assert_allclose(s.x[:, 0], speed * math.cos(math.radians(aoa)))
    np.testing.assert_allclose(s.x[:, 1], speed * math.sin(math.radians(aoa)))
    np.testing.assert_allclose(s.x[:, 2], -fields["implicit_distance"])  # sdf = -implicit_distance (AirfRANS)
    np.testing.assert_allclose(s.x[surf, 3:], normals[:, :2] / np.linalg.norm(normals[:, :2], axis=1,
                                                                               keepdims=True), atol=1e-6)
    others = np.setdiff1d(np.arange(45), surf)
    assert np.all(s.x[others, 3:] == 0)
    np.testing.assert_allclose(s.y, np.column_stack([fields["U"][:, :2], fields["p"], fields["nut"]]))


def test_read_case_errors(tmp_path):
    write_case(tmp_path / "a", drop="nut")
    with pytest.raises(DatasetError, match=rf"{CASE}_internal\.vtu: no point data 'nut'"):
        read_case(tmp_path / "a" / CASE)
    write_case(tmp_path / "b", shift_surface=0.05)
    with pytest.raises(DatasetError, match=r"_aerofoil\.vtp: surface point \d+ .* from the nearest internal-mesh node"):
        read_case(tmp_path / "b" / CASE)
    write_case(tmp_path / "c", name="airFoil2D_SST_fast_3")
    with pytest.raises(DatasetError, match="does not match airFoil2D_SST_<U_inf>_<AoA>"):
        read_case(tmp_path / "c" / "airFoil2D_SST_fast_3")
    assert parse_case_name(CASE) == (43.597, 5.932)


def _dataset(root, cases):
    for c in cases:
        write_case(root, name=c)
    names = {"full_train": cases[:3], "full_test": cases[3:], "scarce_train": cases[:1],
             "reynolds_train": cases[:2], "reynolds_test": cases[2:], "aoa_train": cases[:2], "aoa_test": cases[2:]}
    (root / "manifest.json").write_text(json.dumps(names))


CASES = [f"airFoil2D_SST_{30 + k}.0_{k - 2}.5_4.0_2.0_12.0" for k in range(4)]


def test_import_tasks(tmp_path):
    _dataset(tmp_path / "src", CASES)
    m = import_airfrans(tmp_path / "src", tmp_path / "full", "full", val_fraction=0.34, seed=0)
    assert {k: len(v) for k, v in m.splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert [f.name for f in m.target_fields] == ["u", "v", "p", "nu_t"]
    ds = Dataset(tmp_path / "full")
    test = ds.load_split("test")[0]
    assert test.x[0, 0] == pytest.approx(33.0 * math.cos(math.radians(1.5)))
    m = import_airfrans(tmp_path / "src", tmp_path / "scarce", "scarce")  # scarce tests on full_test
    assert {k: len(v) for k, v in m.splits.items()} == {"train": 1, "test": 1}
    with pytest.raises(ConfigError, match="--task is 'wing'"):
        import_airfrans(tmp_path / "src", tmp_path / "o", "wing")


def test_import_missing_split_key_and_case(tmp_path):
    _dataset(tmp_path / "src", CASES)
    (tmp_path / "src" / "manifest.json").write_text(json.dumps({"full_train": CASES}))
    with pytest.raises(DatasetError, match="key 'full_test' must be a list"):
        import_airfrans(tmp_path / "src", tmp_path / "o")
    (tmp_path / "src" / "manifest.json").write_text(json.dumps({"full_train": ["nope"], "full_test": []}))
    with pytest.raises(DatasetError, match="does not match"):
        import_airfrans(tmp_path / "src", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_import_airfrans(tmp_path, capsys):
    _dataset(tmp_path / "src", CASES)
    out = tmp_path / "o"
    assert main(["import", "airfrans", str(tmp_path / "src"), "--out", str(out), "--task", "aoa",
                 "--no-progress"]) == 0
    assert "imported AirfRANS task aoa (train 2, test 2)" in capsys.readouterr().out
    assert Dataset(out).load_split("train")[0].y.shape == (45, 4)
    assert main(["import", "airfrans", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2
    assert "manifest.json" in capsys.readouterr().err
