"""``dsmpnn partition`` and ``dsmpnn check``, and refusing more ranks than nodes before starting any process."""

import meshio
import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data import Dataset, Field, MeshSample, generate_darcy, write_dataset
from dsmpnn.train import load_config
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap


@pytest.fixture(scope="module")
def darcy(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "darcy"
    generate_darcy(out, n=3, resolution=10, seed=0, splits=(0.34, 0.33, 0.33), progress=False)
    return out


@pytest.fixture(scope="module")
def cloud3d(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "cloud"
    rng = np.random.default_rng(0)
    s = MeshSample(rng.random((60, 3)), rng.random((60, 1)), rng.random((60, 1)), name="cloud")
    write_dataset(out, [("train", s), ("test", s)], [Field("k")], [Field("u")], "cloud")
    return out


def test_partition_prints_report_and_draws_png(darcy, tmp_path, capsys):
    png = tmp_path / "part.png"
    assert main(["partition", "--data", str(darcy), "--nproc", "3", "--method", "rcb", "--halo-hops", "2",
                 "--radius", "0.25", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "100 nodes" in out and "radius 0.25" in out and "rcb, P=3, halo_hops=2: imbalance 1.020" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("0", "1", "2")]
    assert [int(r[1]) for r in rows] == [34, 33, 33] and all(int(r[2]) > 0 for r in rows)  # owned, halo
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # written atomically, no temporary file left


def test_partition_of_3d_mesh_writes_vtu_with_owner_and_halo_count(cloud3d, tmp_path, capsys):
    vtu = tmp_path / "part.vtu"
    assert main(["partition", "--data", str(cloud3d), "--nproc", "2", "--radius", "0.4", "--plot", str(vtu)]) == 0
    mesh = meshio.read(vtu)
    owner, halo = mesh.point_data["owner"], mesh.point_data["halo_count"]
    assert sorted(np.unique(owner)) == [0, 1] and np.bincount(owner).min() >= 29
    assert halo.max() == 1 and halo.sum() > 0  # two ranks: a node is in the halo of the other rank at most
    assert main(["partition", "--data", str(cloud3d), "--nproc", "2", "--plot", str(tmp_path / "p.png")]) == 2
    assert "is 3D; write a .vtu" in capsys.readouterr().err


@pytest.mark.distributed
def test_check_passes_and_prints_a_table(darcy, capsys):
    overrides = ["model.hidden=8", "model.layers=3", "model.kernel_hidden=[8]", "graph.radius=0.25"]
    code = main(["check", "--data", str(darcy), "--nproc", "2", "--partition", "metis", "--halo-hops", "2",
                 *overrides])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 ranks, metis, halo_hops 2, float64" in out and "max rel diff" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("outputs", "grad "))]
    model = build_model(load_config(None, overrides).model, FeatureMap(Dataset(darcy).manifest))
    assert rows[0][0] == "outputs" and [r[1] for r in rows[1:]] == [n for n, _ in model.named_parameters()]
    assert max(float(r[-1]) for r in rows) <= 1e-10
    assert out.splitlines()[-1].startswith("PASSED")


@pytest.mark.parametrize("argv", [
    ["train", "--data", "{data}", "--out", "{tmp}/run", "--nproc", "101"],
    ["partition", "--data", "{data}", "--nproc", "101"],
    ["check", "--data", "{data}", "--nproc", "101"],
])
def test_more_ranks_than_nodes_is_refused_before_starting_processes(darcy, tmp_path, capfd, argv):
    assert main([a.format(data=darcy, tmp=tmp_path) for a in argv]) == 2
    out, err = capfd.readouterr()
    assert err.startswith(f"dsmpnn {argv[0]}: error: mesh 'darcy_") and "Traceback" not in err
    assert "has 100 nodes, fewer than the 101 ranks" in err and "use at most 100 processes" in err
    assert err.count("error:") == 1 and not (tmp_path / "run").exists()
