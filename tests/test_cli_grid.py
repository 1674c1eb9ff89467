"""``dsmpnn import grid`` with public grid datasets as they ship: bool masks, stride-subsampled grids, a test-only
file evaluated by a run trained elsewhere; and its bad inputs (exit 2, one line, nothing written)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsmpnn.cli import main
from dsmpnn.data.dataset import Dataset
from tests.helpers.cli_cases import TINY, Case, World, grid_file, run_case


def public_darcy(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A file like the public Darcy ``.pt``: ``torch.save({"x": bool [n, s, s], "y": float32 [n, s, s]})``."""
    torch.save({"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(np.ascontiguousarray(y))},
               path)
    return path


def darcy_arrays(n: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, s, s)) > 0.5
    yy, xx = np.meshgrid(np.arange(s) / s, np.arange(s) / s, indexing="ij")
    y = (np.sin(np.pi * xx) * np.sin(np.pi * yy))[None] * (1 + 0.5 * x.mean(axis=(1, 2)))[:, None, None]
    return x, (y + 0.1 * x).astype(np.float32)


def test_public_darcy_pt_with_bool_mask_imports(tmp_path, capsys):
    path = public_darcy(tmp_path / "darcy_16.pt", *darcy_arrays(3, 16))
    out = tmp_path / "d16"
    assert main(["import", "grid", str(path), "--out", str(out), "--coords", "stride", "--boundary",
                 "--bbox", "0,2,0,1", "--no-progress"]) == 0
    assert "inputs x, boundary; targets y" in capsys.readouterr().out
    ds = Dataset(out)
    assert "x: bool cast to 0/1" in ds.manifest.description
    assert ds.manifest.grid == {"coords": "stride", "bbox": [0.0, 2.0, 0.0, 1.0], "shape": [16, 16]}
    s = ds.load_split("train")[0]
    pos = s.pos.reshape(16, 16, 2)
    assert pos[0, 15].tolist() == [2 * 15 / 16, 0.0] and pos[15, 0].tolist() == [0.0, 15 / 16]
    assert s.x[:, 1].reshape(16, 16)[15, 15] == 0 and s.x[:, 1].reshape(16, 16)[0, 15] == 1


def test_run_trained_on_one_grid_file_evaluates_a_separate_test_only_file(tmp_path, capsys):
    """Train at 16x16 (stride nodes) on one file; import another file test-only and evaluate on it: the run's own
    training statistics normalise it (same metrics as the same samples inside the training dataset), and the
    32x32 version of the test samples (resolution transfer) sits on the same positions for the shared nodes."""
    x32, y32 = darcy_arrays(8, 32, seed=1)
    x16, y16 = x32[:, ::2, ::2], y32[:, ::2, ::2]
    train_file = public_darcy(tmp_path / "train16.pt", x16, y16)
    data, run = tmp_path / "d16", tmp_path / "run"
    common = ["--coords", "stride", "--boundary", "--no-progress"]
    assert main(["import", "grid", str(train_file), "--out", str(data), "--split", "0.5,0.25,0.25", *common]) == 0
    assert main(["train", "--no-progress", "--data", str(data), "--out", str(run), *TINY, "train.epochs=1"]) == 0
    test_idx = [int(Path(f).stem.rsplit("_", 1)[1]) for f in Dataset(data).split("test")]

    for name, x, y in (("test16", x16, y16), ("test32", x32, y32)):
        f = public_darcy(tmp_path / f"{name}.pt", x[test_idx], y[test_idx])
        assert main(["import", "grid", str(f), "--out", str(tmp_path / name), "--split", "0,0,1", *common]) == 0
    only = Dataset(tmp_path / "test16").manifest
    assert list(only.splits) == ["test"] and only.stats_on == "test"
    trained = Dataset(data).manifest
    assert not np.allclose(only.stats["y"].mean, trained.stats["y"].mean)  # its own stats differ from the run's

    capsys.readouterr()
    metrics = {}
    for name, d in (("inside", data), ("test16", tmp_path / "test16"), ("test32", tmp_path / "test32")):
        assert main(["evaluate", str(run), "--data", str(d), "--split", "test", "--no-plots"]) == 0
        metrics[name] = json.loads((run / "metrics.json").read_text())
    assert metrics["test16"]["dataset"] == str(tmp_path / "test16")
    assert metrics["test16"]["rel_l2"] == pytest.approx(metrics["inside"]["rel_l2"], rel=1e-9)
    assert metrics["test16"]["rmse"] == pytest.approx(metrics["inside"]["rmse"], rel=1e-9)
    assert np.isfinite(metrics["test32"]["rel_l2"])
    p16 = Dataset(tmp_path / "test16").load_split("test")[0].pos.reshape(16, 16, 2)
    p32 = Dataset(tmp_path / "test32").load_split("test")[0].pos.reshape(32, 32, 2)
    np.testing.assert_array_equal(p32[::2, ::2], p16)

    err_code = main(["train", "--no-progress", "--data", str(tmp_path / "test16"), "--out", str(tmp_path / "r2"),
                     *TINY])
    err = capsys.readouterr().err
    assert err_code == 2 and "no split 'train'" in err and "dsmpnn evaluate RUN --data" in err
    assert not (tmp_path / "r2").exists()


GRID = ["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o", "--no-progress"]
GOOD = grid_file(x=np.ones((3, 4, 5), dtype=bool), y=np.ones((3, 4, 5), dtype=np.float32))
CASES = {
    "bbox reversed": Case([*GRID, "--bbox", "1,0,0,1"], ["--bbox is '1,0,0,1'", "XMIN < XMAX"], ["{tmp}/o"], GOOD),
    "bbox three numbers": Case([*GRID, "--bbox", "0,1,0"], ["--bbox is '0,1,0'", "four numbers"], ["{tmp}/o"], GOOD),
    "bbox nan": Case([*GRID, "--bbox", "0,nan,0,1"], ["--bbox", "four numbers"], ["{tmp}/o"], GOOD),
    "coords banana": Case([*GRID, "--coords", "banana"], ["--coords", "'banana'", "endpoint", "stride"], ["{tmp}/o"],
                          GOOD),
    "stride-of too small": Case([*GRID, "--stride-of", "1"], ["--stride-of is '1'", "N or NH,NW"], ["{tmp}/o"], GOOD),
    "stride-of does not fit": Case([*GRID, "--stride-of", "7"], ["{tmp}/g.npz", "key 'x'", "stride-of 7",
                                                                  "5 columns (W)"], ["{tmp}/o"], GOOD),
    "complex input": Case(GRID, ["{tmp}/g.npz", "key 'x'", "complex numbers", "real part"], ["{tmp}/o"],
                          grid_file(x=np.ones((3, 4, 5)) * 1j, y=np.ones((3, 4, 5)))),
    "boundary clash": Case([*GRID, "--boundary", "--x-key", "boundary"], ["{tmp}/g.npz", "already named 'boundary'"],
                           ["{tmp}/o"], grid_file(boundary=np.ones((3, 4, 5)), y=np.ones((3, 4, 5)))),
    "split all zero": Case([*GRID, "--split", "0,0,0"], ["split", "sum to 0"], ["{tmp}/o"], GOOD),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_grid_import_exits_2_with_one_line_and_writes_nothing(name, shared, tmp_path, capsys):
    run_case(CASES[name], World(*shared, tmp_path), capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.tmp")]
