"""Regular-grid helpers and the importer: round trips from every format, key detection, bad inputs."""

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from dsmpnn.data.dataset import Dataset, Manifest
from dsmpnn.data.grid import (GridLayout, assign_splits, grid_positions, grid_quads, grid_to_sample,
                              parse_splits)
from dsmpnn.data.grid_import import import_grid
from dsmpnn.errors import ConfigError, DatasetError

S, H, W = 5, 4, 6


# --- grid helpers ---------------------------------------------------------------------------------------------


def test_grid_positions_are_row_major_with_axis0_along_y():
    pos = grid_positions(3, 5)
    assert pos.shape == (15, 2)
    i, j = 2, 3
    np.testing.assert_allclose(pos[i * 5 + j], [j / 4, i / 2])
    assert pos[:, 0].min() == 0 and pos[:, 0].max() == 1 and pos[:, 1].max() == 1


def test_grid_quads_are_counter_clockwise_and_cover_the_square():
    pos, quads = grid_positions(4, 6), grid_quads(4, 6)
    assert quads.shape == (15, 4)
    p = pos[quads]  # [M, 4, 2]
    area = 0.5 * np.sum(p[:, :, 0] * np.roll(p[:, :, 1], -1, axis=1) - np.roll(p[:, :, 0], -1, axis=1) * p[:, :, 1],
                        axis=1)  # shoelace, positive when counter-clockwise
    np.testing.assert_allclose(area, 1 / (3 * 5))
    assert np.isclose(area.sum(), 1.0)


def test_grid_to_sample_maps_fields_to_nodes():
    inp = np.random.default_rng(0).standard_normal((H, W, 2))
    s = grid_to_sample(inp, inp[..., :1] * 2, name="g")
    np.testing.assert_array_equal(s.x[1 * W + 4], inp[1, 4])
    np.testing.assert_array_equal(s.y[:, 0], 2 * inp[..., 0].ravel())
    assert s.cell_type == "quad"
    with pytest.raises(DatasetError, match=r"sample 'g': grid targets have shape \(4, 5, 1\)"):
        grid_to_sample(inp, np.zeros((H, W - 1, 1)), name="g")


def test_assign_splits_is_seeded_and_fills_each_split():
    labels = assign_splits(10, (0.8, 0.1, 0.1), seed=3)
    assert labels.count("train") == 8 and labels.count("val") == 1 and labels.count("test") == 1
    assert labels == assign_splits(10, (0.8, 0.1, 0.1), seed=3)
    assert labels != assign_splits(10, (0.8, 0.1, 0.1), seed=4)
    assert [assign_splits(n, (0.8, 0.1, 0.1)).count("train") for n in (1, 2, 3, 6)] == [1, 1, 1, 4]
    assert assign_splits(5, (1, 0, 0)) == ["train"] * 5


@pytest.mark.parametrize("text", ["0.8,0.1", "0.5,0.1,0.1", "a,b,c", "0,0,0", "1.2,-0.1,-0.1"])
def test_parse_splits_rejects(text):
    with pytest.raises(ConfigError, match="split"):
        parse_splits(text)


def test_a_test_only_split_is_allowed():
    """A dataset to evaluate a trained run on: no train split (its statistics come from the run)."""
    assert parse_splits("0,0,1", need_train=False) == (0.0, 0.0, 1.0)
    with pytest.raises(ConfigError, match="the train fraction > 0"):
        parse_splits("0,0,1")  # where a train split is needed (generators that solve before writing)
    assert assign_splits(4, (0, 0, 1)) == ["test"] * 4


# --- importer round trips -------------------------------------------------------------------------------------


def make_arrays(channels: bool):
    rng = np.random.default_rng(1)
    shape = (S, H, W, 2) if channels else (S, H, W)
    return rng.standard_normal(shape), rng.standard_normal(shape[:3]) + 5


def save(fmt: str, tmp: Path, arrays: dict) -> tuple[Path, dict]:
    """Write ``arrays`` in format ``fmt``; return the file and the extra import_grid arguments."""
    if fmt == "mat":
        path = tmp / "data.mat"
        scipy.io.savemat(path, arrays)
    elif fmt == "npz":
        path = tmp / "data.npz"
        np.savez(path, **arrays)
    elif fmt == "pt":
        path = tmp / "data.pt"
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    elif fmt == "npy":
        (kx, x), (ky, y) = arrays.items()
        path = tmp / f"{kx}.npy"
        np.save(path, x)
        np.save(tmp / f"{ky}.npy", y)
        return path, {"y_path": tmp / f"{ky}.npy"}
    return path, {}


def read_back(out: Path) -> tuple[Dataset, dict[int, object]]:
    """The dataset and its samples by source index (the ``_<k>`` file suffix)."""
    ds = Dataset(out)
    samples = {}
    for split in ds.manifest.splits:
        for rel, s in zip(ds.split(split), ds.load_split(split)):
            samples[int(Path(rel).stem.rsplit("_", 1)[1])] = s
    return ds, samples


@pytest.mark.parametrize("channels", [False, True], ids=["SHW", "SHWC"])
@pytest.mark.parametrize("fmt", ["mat", "npz", "npy", "pt"])
def test_round_trip(tmp_path, fmt, channels):
    x, y = make_arrays(channels)
    path, kw = save(fmt, tmp_path, {"coeff": x, "sol": y})
    m = import_grid(path, tmp_path / "out", seed=2, **kw)
    assert sum(len(v) for v in m.splits.values()) == S
    ds, samples = read_back(tmp_path / "out")
    assert [f.name for f in ds.manifest.input_fields] == (["coeff_0", "coeff_1"] if channels else ["coeff"])
    assert [f.name for f in ds.manifest.target_fields] == ["sol"]
    x4 = x if channels else x[..., None]
    for k in range(S):
        np.testing.assert_allclose(samples[k].x, x4[k].reshape(H * W, -1), rtol=1e-6)  # .pt may hold float32
        np.testing.assert_allclose(samples[k].y[:, 0], y[k].ravel(), rtol=1e-6)
        np.testing.assert_array_equal(samples[k].pos, grid_positions(H, W))


@pytest.mark.parametrize("keys", [("coeff", "sol"), ("a", "u"), ("x", "y"), ("Input", "Solution")])
@pytest.mark.parametrize("fmt", ["mat", "npz"])
def test_auto_detects_keys(tmp_path, fmt, keys):
    x, y = make_arrays(False)
    path, _ = save(fmt, tmp_path, {keys[0]: x, keys[1]: y, "Kcoeff": x[:, :2, :2], "meta": np.arange(3.0)})
    m = import_grid(path, tmp_path / "out")
    assert [f.name for f in m.input_fields] == [keys[0]] and [f.name for f in m.target_fields] == [keys[1]]


def test_explicit_keys_override_detection(tmp_path):
    x, y = make_arrays(True)
    path, _ = save("npz", tmp_path, {"perm": x, "pressure": y, "u": x[..., 0]})
    import_grid(path, tmp_path / "out", x_key="PERM", y_key="pressure", splits="1,0,0")
    ds, samples = read_back(tmp_path / "out")
    assert list(ds.manifest.splits) == ["train"]
    assert [f.name for f in ds.manifest.target_fields] == ["pressure"]
    np.testing.assert_array_equal(samples[3].y[:, 0], y[3].ravel())


def test_separate_target_file_with_several_arrays(tmp_path):
    x, y = make_arrays(False)
    np.save(tmp_path / "coef.npy", x)
    np.savez(tmp_path / "targets.npz", sol=y, grid=np.zeros((2, 2)))
    m = import_grid(tmp_path / "coef.npy", tmp_path / "out", y_path=tmp_path / "targets.npz")
    assert [f.name for f in m.input_fields] == ["coef"] and [f.name for f in m.target_fields] == ["sol"]


# --- bad inputs -----------------------------------------------------------------------------------------------


def _npz(tmp, **arrays):
    np.savez(tmp / "bad.npz", **arrays)
    return tmp / "bad.npz", {}


def _bytes(tmp, name, data: bytes, **kw):
    (tmp / name).write_bytes(data)
    return tmp / name, kw


def _truncated(tmp, fmt):
    good, _ = save(fmt, tmp, {"x": np.ones((S, H, W)), "y": np.ones((S, H, W))})
    data = good.read_bytes()
    return _bytes(tmp, f"cut.{fmt}", data[: len(data) // 2])


def _torch_list(tmp):
    torch.save([1, 2], tmp / "l.pt")
    return tmp / "l.pt", {}


def _lone_npy(tmp):
    np.save(tmp / "x.npy", good_x)
    return tmp / "x.npy", {}


good_x, good_y = np.ones((S, H, W)), np.zeros((S, H, W))
nan_y = good_y.copy()
nan_y[2, 1, 1] = np.nan
inf_x = good_x.copy()
inf_x[4, 0, 0] = np.inf

# case: (make(tmp_path) -> (file, import_grid keywords), fragments the message must contain)
BAD = {
    "missing file": (lambda t: (t / "nope.npz", {}), ["does not exist"]),
    "unknown extension": (lambda t: _bytes(t, "d.csv", b"1,2"), [".csv", "expected one of"]),
    "no input key": (lambda t: _npz(t, foo=good_x, sol=good_y), ["no input array", "['foo', 'sol']", "--x-key"]),
    "no target key": (lambda t: _npz(t, coeff=good_x, bar=good_y), ["no target array", "['bar', 'coeff']", "--y FILE"]),
    "ambiguous": (lambda t: _npz(t, a=good_x, coeff=good_x, u=good_y),
                  ["several possible input arrays", "['a', 'coeff']"]),
    "explicit key missing": (lambda t: (_npz(t, x=good_x, y=good_y)[0], {"x_key": "zz"}),
                             ["no input key 'zz'", "['x', 'y']"]),
    "same key": (lambda t: (_npz(t, x=good_x, y=good_y)[0], {"x_key": "y", "y_key": "y"}),
                 ["'y'", "both inputs and targets"]),
    "shape mismatch": (lambda t: _npz(t, x=good_x, y=np.zeros((S, H, W + 1))),
                       ["'x' has shape (5, 4, 6, 1)", "'y'", "(5, 4, 7, 1)", "same [samples, H, W]"]),
    "sample count mismatch": (lambda t: _npz(t, x=good_x, y=np.zeros((S - 1, H, W))),
                              ["(4, 4, 6, 1)", "same [samples, H, W]"]),
    "ndim 2": (lambda t: _npz(t, x=np.ones((H, W)), y=good_y),
               ["key 'x'", "(4, 6)", "2 dimensions", "[samples, H, W]"]),
    "ndim 5": (lambda t: _npz(t, x=good_x, y=np.ones((S, H, W, 1, 1))), ["key 'y'", "5 dimensions"]),
    "tiny grid": (lambda t: _npz(t, x=np.ones((S, 1, W)), y=np.ones((S, 1, W))), ["key 'x'", "at least 2 x 2"]),
    "strings": (lambda t: _npz(t, x=np.full((S, H, W), "a"), y=good_y), ["key 'x'", "dtype <U1", "real numbers"]),
    "nan": (lambda t: _npz(t, x=good_x, y=nan_y), ["key 'y'", "1 NaN/Inf", "sample 2"]),
    "inf": (lambda t: _npz(t, x=inf_x, y=good_y), ["key 'x'", "NaN/Inf", "sample 4"]),
    "npy without targets": (_lone_npy, ["--y FILE"]),
    "truncated npz": (lambda t: _truncated(t, "npz"), ["cannot read the .npz file"]),
    "truncated pt": (lambda t: _truncated(t, "pt"), ["cannot read the .pt file"]),
    "truncated mat": (lambda t: _truncated(t, "mat"), ["cannot read the .mat file"]),
    "corrupt npy": (lambda t: _bytes(t, "c.npy", b"\x93NUMPY garbage", y_path=t / "c.npy"),
                    ["cannot read the .npy file"]),
    "corrupt mat": (lambda t: _bytes(t, "c.mat", b"not a mat file at all" * 20), ["cannot read the .mat file"]),
    "pt not a dict": (_torch_list, ["holds a list", "dict of tensors"]),
    "missing target file": (lambda t: (_npz(t, x=good_x)[0], {"y_path": t / "absent.npy"}),
                            ["absent.npy", "does not exist"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_clear_error_and_writes_nothing(tmp_path, case):
    make, fragments = BAD[case]
    path, kw = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        import_grid(path, out, **kw)
    msg = str(err.value)
    assert str(path) in msg or str(kw.get("y_path")) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left behind


def test_v73_mat_without_h5py_suggests_conversion(tmp_path):
    try:
        import h5py  # noqa: F401
        pytest.skip("h5py is installed, v7.3 files are read")
    except ImportError:
        pass
    # a v7.3 header: text, subsystem offset, version 0x0200, endian indicator; HDF5 data would follow at 512
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM"
    path, _ = _bytes(tmp_path, "v73.mat", header + b"\x00" * 512)
    with pytest.raises(DatasetError, match=r"v7\.3 \(HDF5\).*h5py.*-v7") as err:
        import_grid(path, tmp_path / "out")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    path, _ = _npz(tmp_path, x=good_x, y=good_y)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists and is not empty"):
        import_grid(path, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_v73_mat_is_read_with_h5py(tmp_path):
    h5py = pytest.importorskip("h5py")
    x, y = make_arrays(False)
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:  # MATLAB writes column-major: [S, H, W] -> [W, H, S]
        f.create_dataset("coeff", data=x.T)
        f.create_dataset("sol", data=y.T)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
    import_grid(path, tmp_path / "out")
    _, samples = read_back(tmp_path / "out")
    np.testing.assert_array_equal(samples[1].x[:, 0], x[1].ravel())
    np.testing.assert_array_equal(samples[1].y[:, 0], y[1].ravel())


# --- bool and integer arrays ----------------------------------------------------------------------------------


def darcy_like(n: int = 4, s: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Like the public Darcy files: a bool coefficient mask x [n, s, s] and a float32 solution y."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, s, s)) > 0.5
    return x, (rng.standard_normal((n, s, s)) + 3 * x).astype(np.float32)


@pytest.mark.parametrize("fmt", ["pt", "mat", "npz"])
def test_bool_inputs_are_imported_as_0_1_and_said_so(tmp_path, fmt):
    x, y = darcy_like()
    if fmt == "pt":  # torch.save of a dict of tensors, x a torch.bool tensor, as the public files ship
        path = tmp_path / "darcy.pt"
        torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, path)
        assert torch.load(path)["x"].dtype == torch.bool
    else:
        path, _ = save(fmt, tmp_path, {"x": x, "y": y})
    m = import_grid(path, tmp_path / "out")
    assert "x: bool cast to 0/1" in m.description and "y:" not in m.description.split("row-major nodes")[1]
    _, samples = read_back(tmp_path / "out")
    for k, s in samples.items():
        assert s.x.dtype == np.float64 and set(np.unique(s.x)) <= {0.0, 1.0}
        np.testing.assert_array_equal(s.x[:, 0], x[k].ravel().astype(float))
        np.testing.assert_array_equal(s.y[:, 0], y[k].ravel().astype(np.float64))


def test_integer_and_bool_targets_are_data(tmp_path):
    x = np.arange(S * H * W, dtype=np.int16).reshape(S, H, W) - 50
    y = (x % 3 == 0)  # a bool target (a mask): regressed as 0/1 like any field
    path, _ = save("npz", tmp_path, {"labels": x.astype(np.uint8), "coeff": x, "y": y})
    m = import_grid(path, tmp_path / "out", x_key="coeff")
    assert "coeff: int16 cast to float64" in m.description and "y: bool cast to 0/1" in m.description
    _, samples = read_back(tmp_path / "out")
    np.testing.assert_array_equal(samples[2].x[:, 0], x[2].ravel())
    np.testing.assert_array_equal(samples[2].y[:, 0], y[2].ravel())


@pytest.mark.parametrize("make, fragment", [
    (lambda: np.ones((S, H, W)) + 1j, "complex numbers"),
    (lambda: np.zeros((S, H, W), dtype=[("re", "f8"), ("im", "f8")]), "structured records"),
    (lambda: np.full((S, H, W), "a"), "strings"),
])
def test_non_real_arrays_are_refused_by_kind(tmp_path, make, fragment):
    path, _ = _npz(tmp_path, x=make(), y=good_y)
    with pytest.raises(DatasetError, match=f"key 'x' has dtype .* \\({fragment}\\), expected real numbers: float, "
                                           "integer or bool"):
        import_grid(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mat_cell_array_is_refused(tmp_path):
    cells = np.empty((S, H, W), dtype=object)
    cells[...] = "a"
    scipy.io.savemat(tmp_path / "c.mat", {"x": cells, "y": good_y})
    with pytest.raises(DatasetError, match=r"key 'x' has dtype object \(Python objects\)"):
        import_grid(tmp_path / "c.mat", tmp_path / "out")


def test_v73_mat_logical_is_read_as_bool(tmp_path):
    h5py = pytest.importorskip("h5py")
    x, y = darcy_like()
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("coeff", data=x.T.astype(np.uint8)).attrs["MATLAB_class"] = np.bytes_("logical")
        f.create_dataset("sol", data=y.T)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
    m = import_grid(path, tmp_path / "out")
    assert "coeff: bool cast to 0/1" in m.description


# --- where the nodes sit ----------------------------------------------------------------------------------------


def test_endpoint_and_stride_positions_are_exact():
    h, w = 3, 5
    end, stride = GridLayout("endpoint").positions(h, w), GridLayout("stride").positions(h, w)
    for i in range(h):
        for j in range(w):
            assert end[i * w + j].tolist() == [j / (w - 1), i / (h - 1)]
            assert stride[i * w + j].tolist() == [j / w, i / h]
    assert end.max() == 1.0 and stride[:, 0].max() == 4 / 5 and stride[:, 1].max() == 2 / 3


def test_bbox_places_the_walls_exactly():
    box = (-0.3, 0.7, 2.0, 2.1)
    pos = GridLayout("endpoint", box).positions(4, 7).reshape(4, 7, 2)
    assert pos[:, 0, 0].tolist() == [-0.3] * 4 and pos[:, -1, 0].tolist() == [0.7] * 4
    assert pos[0, :, 1].tolist() == [2.0] * 7 and pos[-1, :, 1].tolist() == [2.1] * 7
    np.testing.assert_allclose(pos[2, 3], [-0.3 + 3 / 6, 2.0 + 2 * 0.1 / 3])
    stride = GridLayout("stride", box).positions(4, 5).reshape(4, 5, 2)
    np.testing.assert_allclose(stride[3, 4], [-0.3 + 4 / 5, 2.0 + 3 * 0.1 / 4])
    assert GridLayout("endpoint", box).boundary(4, 7).sum() == 2 * 4 + 2 * 7 - 4


def boundary_of_rows_and_columns(h, w, rows, cols):
    b = np.zeros((h, w))
    b[rows, :] = 1
    b[:, cols] = 1
    return b


def test_stride_pair_32_and_16_share_positions_and_boundaries(tmp_path):
    """The 16x16 file is the 32x32 one taken [::2, ::2]: with --coords stride the shared nodes coincide
    exactly, and only the first row/column is on the wall (the last ones are a spacing short of it)."""
    rng = np.random.default_rng(3)
    x32, y32 = rng.random((2, 32, 32)) > 0.5, rng.random((2, 32, 32)).astype(np.float32)
    x16, y16 = x32[:, ::2, ::2], y32[:, ::2, ::2]
    for name, x, y in (("d32", x32, y32), ("d16", x16, y16)):
        torch.save({"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(np.ascontiguousarray(y))},
                   tmp_path / f"{name}.pt")
        import_grid(tmp_path / f"{name}.pt", tmp_path / name, coords="stride", boundary=True, splits="1,0,0")
    s32 = Dataset(tmp_path / "d32").load_split("train")[0]
    s16 = Dataset(tmp_path / "d16").load_split("train")[0]
    p32, p16 = s32.pos.reshape(32, 32, 2), s16.pos.reshape(16, 16, 2)
    np.testing.assert_array_equal(p32[::2, ::2], p16)  # bit-identical: same physical place, same node
    assert p16[-1, -1].tolist() == [15 / 16, 15 / 16] and p32[-1, -1].tolist() == [31 / 32, 31 / 32]
    np.testing.assert_array_equal(s32.x[:, 1].reshape(32, 32), boundary_of_rows_and_columns(32, 32, 0, 0))
    np.testing.assert_array_equal(s16.x[:, 1].reshape(16, 16), boundary_of_rows_and_columns(16, 16, 0, 0))
    # the endpoint convention (the default) puts them a cell apart: what --coords stride fixes
    e32, e16 = GridLayout().positions(32, 32).reshape(32, 32, 2), GridLayout().positions(16, 16).reshape(16, 16, 2)
    assert np.abs(e32[::2, ::2] - e16).max() > 0.03


def test_endpoint_grid_taken_with_a_step_that_misses_the_wall():
    """A 41-node endpoint grid taken [::6] has 7 nodes at 6j/40: the last at 36/40, not on the wall."""
    full = GridLayout("endpoint").positions(41, 41).reshape(41, 41, 2)
    sub = GridLayout("endpoint", stride_of=(41, 41))
    assert sub.steps(7, 7) == (6, 6)
    np.testing.assert_array_equal(sub.positions(7, 7).reshape(7, 7, 2), full[::6, ::6])
    np.testing.assert_array_equal(sub.boundary(7, 7), boundary_of_rows_and_columns(7, 7, 0, 0))
    # the 32 stride grid from the 16 one's point of view: taken [::2]
    np.testing.assert_array_equal(GridLayout("stride", stride_of=(32, 32)).positions(16, 16),
                                  GridLayout("stride").positions(16, 16))
    assert "a 41 x 41 grid taken [::6, ::6], x_j = xmin + 6 j (xmax - xmin) / 40" in sub.describe(7, 7)


@pytest.mark.parametrize("layout, shape, fragment", [
    (dict(coords="stride", stride_of=(7, 7)), (4, 5), "5 columns (W) are not a 7-node grid taken every k-th node"),
    (dict(stride_of=(100, 100)), (3, 3), "fit several steps k = 34..49"),
    (dict(stride_of=(10, 10)), (11, 11), "more than the 10"),
])
def test_stride_of_that_does_not_fit_is_refused(layout, shape, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        GridLayout(**layout).steps(*shape)


@pytest.mark.parametrize("kw, fragment", [
    (dict(coords="banana"), "expected one of endpoint, stride"),
    (dict(bbox=(1, 0, 0, 1)), "xmin < xmax"),
    (dict(bbox=(0, 1, 0, float("nan"))), "four finite numbers"),
    (dict(stride_of=(1, 8)), "N >= 2"),
])
def test_bad_layout_is_refused(kw, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        GridLayout(**kw)


def test_manifest_records_the_layout_and_keeps_it(tmp_path):
    x, y = darcy_like(s=8)
    path, _ = save("npz", tmp_path, {"x": x, "y": y})
    import_grid(path, tmp_path / "out", coords="stride", bbox=(0, 2, 0, 1), stride_of=16)
    m = Dataset(tmp_path / "out").manifest
    assert m.grid == {"coords": "stride", "bbox": [0.0, 2.0, 0.0, 1.0], "shape": [8, 8], "stride_of": [16, 16],
                      "step": [2, 2]}
    assert "8x8 grid, stride nodes (a 16 x 16 grid taken [::2, ::2]" in m.description
    assert "on [0, 2] x [0, 1]" in m.description
    assert Manifest.from_json(m.to_json(), tmp_path / "m.json") == m
    _, samples = read_back(tmp_path / "out")
    assert samples[0].pos[:, 0].max() == 2 * 7 / 8


def test_boundary_field_name_clash_is_refused(tmp_path):
    path, _ = _npz(tmp_path, boundary=good_x, y=good_y)
    with pytest.raises(DatasetError, match="already named 'boundary'"):
        import_grid(path, tmp_path / "out", x_key="boundary", boundary=True)
    assert not (tmp_path / "out").exists()


# --- test-only datasets ---------------------------------------------------------------------------------------


def test_test_only_import_has_stats_of_its_own_samples(tmp_path):
    x, y = darcy_like()
    path, _ = save("npz", tmp_path, {"x": x, "y": y})
    m = import_grid(path, tmp_path / "out", splits="0,0,1")
    assert list(m.splits) == ["test"] and len(m.splits["test"]) == 4
    assert m.stats_on == "test" and "no train split" in m.description
    ds = Dataset(tmp_path / "out")
    assert ds.manifest.stats_on == "test"
    assert ds.manifest.to_json()["stats"]["computed_on"] == "test"
    np.testing.assert_allclose(ds.manifest.stats["y"].mean, [y.astype(np.float64).mean()])
    with pytest.raises(DatasetError, match=r"no split 'train', this dataset has only \['test'\].*dsmpnn evaluate RUN"):
        ds.split("train")
    assert assign_splits(3, (0, 0.5, 0.5)).count("train") == 0
    with pytest.raises(ConfigError, match="train fraction > 0"):
        parse_splits("0,0,1")  # the default still needs a train split (generators of training data)
    assert parse_splits("0,0,1", need_train=False) == (0.0, 0.0, 1.0)
