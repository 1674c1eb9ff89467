"""The Python API (dsmpnn.load_run, Run.predict, Run.predict_mesh, dsmpnn.train): the same prediction as
`dsmpnn predict`, the same checks as files, and the README's example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import meshio
import numpy as np
import pytest
import torch

import dsmpnn
from dsmpnn.cli import main
from dsmpnn.data.dataset import Dataset
from dsmpnn.errors import CheckpointError, ConfigError, DatasetError
from tests.helpers.cli_cases import TINY


@pytest.fixture(scope="module")
def loaded(shared):
    data, run = shared
    ds = Dataset(data)
    return dsmpnn.load_run(run), ds, ds.file(ds.split("test")[0])


def cli_predict(run: Path, mesh: Path, out: Path) -> np.ndarray:
    assert main(["predict", str(run), "--input", str(mesh), "--out", str(out)]) == 0
    with np.load(out) as z:
        return z["pred"]


def test_predict_equals_dsmpnn_predict(shared, loaded, tmp_path):
    run, ds, path = loaded
    sample = ds.load(path.relative_to(ds.root).as_posix())
    expected = cli_predict(shared[1], path, tmp_path / "pred.npz")
    y = run.predict(sample.pos, sample.x)
    assert isinstance(y, np.ndarray) and y.shape == (sample.num_nodes, 1) and y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-9, atol=1e-12)
    y_torch = run.predict(torch.from_numpy(sample.pos), torch.from_numpy(sample.x).float())  # float32 tensors too
    np.testing.assert_allclose(y_torch, expected, rtol=1e-5, atol=1e-7)
    y_list = run.predict(sample.pos.tolist(), sample.x.tolist())
    np.testing.assert_allclose(y_list, expected, rtol=1e-9, atol=1e-12)


def test_run_attributes(shared, loaded):
    run, _, _ = loaded
    assert run.path == shared[1] and run.epoch == 1 and run.dim == 2
    assert run.input_names == ["a", "boundary", "a_smooth", "a_smooth_dx", "a_smooth_dy"]
    assert run.target_names == ["u"]
    assert run.dtype == torch.float32 and run.device == torch.device("cpu")
    assert not run.model.training
    assert run.config.model.hidden == 8 and run.data_dir == shared[0].resolve()
    assert "epoch=1" in repr(run)


def test_predict_mesh_on_npz_vtu_and_sample(shared, loaded, tmp_path):
    run, ds, path = loaded
    sample = ds.load(path.relative_to(ds.root).as_posix())
    expected = cli_predict(shared[1], path, tmp_path / "pred.npz")

    from_npz = run.predict_mesh(path)
    np.testing.assert_allclose(from_npz.pred, expected, rtol=1e-9, atol=1e-12)
    err = expected[:, 0] - sample.y[:, 0]
    assert from_npz.metrics["rmse"]["u"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-9)
    assert from_npz.metrics["rel_l2"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(sample.y), rel=1e-9)
    np.testing.assert_array_equal(from_npz.fields["u"], from_npz.pred[:, 0])
    np.testing.assert_array_equal(from_npz.error, from_npz.pred - sample.y)

    from_sample = run.predict_mesh(sample)
    np.testing.assert_array_equal(from_sample.pred, from_npz.pred)
    assert from_sample.metrics == from_npz.metrics

    # a solver's .vtu: inputs and the target as named point data, 3D points with z = 0, its triangles
    vtu = tmp_path / "solver.vtu"
    point_data = {n: sample.x[:, k] for k, n in enumerate(run.input_names)} | {"u": sample.y[:, 0]}
    points = np.column_stack([sample.pos, np.zeros(sample.num_nodes)])
    meshio.write(vtu, meshio.Mesh(points, [(sample.cell_type, sample.cells)], point_data=point_data))
    from_vtu = run.predict_mesh(str(vtu))
    np.testing.assert_allclose(from_vtu.pred, expected, rtol=1e-6, atol=1e-9)  # .vtu stores float64 exactly
    assert from_vtu.metrics["rel_l2"] == pytest.approx(from_npz.metrics["rel_l2"], rel=1e-6)
    assert from_vtu.cell_blocks[0][0] == sample.cell_type
    np.testing.assert_allclose(from_vtu.pred, cli_predict(shared[1], vtu, tmp_path / "vtu.npz"), rtol=1e-9,
                               atol=1e-12)

    unlabelled = dsmpnn.MeshSample(sample.pos, sample.x)
    result = run.predict_mesh(unlabelled)
    assert result.metrics is None and result.error is None
    np.testing.assert_array_equal(result.pred, from_npz.pred)


def test_bad_input_raises_with_a_clear_message(loaded, tmp_path):
    run, ds, path = loaded
    sample = ds.load(path.relative_to(ds.root).as_posix())
    pos, x = sample.pos, sample.x
    with pytest.raises(DatasetError, match=r"field 'x' has shape \(64, 4\), expected \[N, 5\] for the run's input "
                                           r"fields \['a', 'boundary'"):
        run.predict(pos, x[:, :4])
    nan = x.copy()
    nan[3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"field 'x' has 1 NaN/Inf values, expected finite numbers"):
        run.predict(pos, nan)
    with pytest.raises(DatasetError, match=r"field 'pos' has 2 NaN/Inf"):
        run.predict(np.where(np.arange(64)[:, None] == 0, np.inf, pos), x)
    with pytest.raises(DatasetError, match=r"field 'pos' has shape \(64, 3\), expected \[N, 2\]: the run was "
                                           r"trained on 2D meshes"):
        run.predict(np.column_stack([pos, np.zeros(64)]), x)
    with pytest.raises(DatasetError, match=r"field 'x' has shape \(63, 5\), expected \[N, F\] with N=64"):
        run.predict(pos, x[:-1])
    with pytest.raises(DatasetError, match=r"duplicate node position"):
        run.predict(np.vstack([pos[:-1], pos[:1]]), x)
    with pytest.raises(DatasetError, match=r"dtype <U1, expected a real number array"):
        run.predict(pos, np.full(x.shape, "a"))
    huge = x.copy()
    huge[0, 0] = 1e300
    with pytest.raises(DatasetError, match=r"normalises .* beyond the torch.float32 range"):
        run.predict(pos, huge)
    with pytest.raises(DatasetError, match=r"field 'y' has shape \(64, 2\), expected \[N, 1\] for the run's "
                                           r"target fields \['u'\]"):
        run.predict_mesh(dsmpnn.MeshSample(pos, x, np.zeros((64, 2))))
    with pytest.raises(DatasetError, match=r"expected a MeshSample or the path of a mesh file, got dict"):
        run.predict_mesh({"pos": pos})
    with pytest.raises(DatasetError, match=r"missing\.vtu"):
        run.predict_mesh(tmp_path / "missing.vtu")
    vtu = tmp_path / "no_inputs.vtu"
    meshio.write(vtu, meshio.Mesh(np.column_stack([pos, np.zeros(64)]), [("vertex", np.arange(64)[:, None])],
                                  point_data={"a": x[:, 0]}))
    with pytest.raises(DatasetError, match=r"no_inputs\.vtu: no field 'boundary' \(the model's input field\); "
                                           r"the file has point data \['a'\]"):
        run.predict_mesh(vtu)


def test_load_run_errors_and_devices(shared, tmp_path):
    with pytest.raises(CheckpointError, match="run directory does not exist"):
        dsmpnn.load_run(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"device is 'tpu', expected 'cpu', 'cuda' or 'cuda:K'"):
        dsmpnn.load_run(shared[1], device="tpu")
    with pytest.raises(ConfigError, match=r"device is 'cuda:64', but this machine has \d+ CUDA device"):
        dsmpnn.load_run(shared[1], device="cuda:64")
    assert dsmpnn.load_run(shared[1], device=torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu(loaded):
    run, ds, path = loaded
    gpu = dsmpnn.load_run(run.path, device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    sample = ds.load(path.relative_to(ds.root).as_posix())
    np.testing.assert_allclose(gpu.predict(sample.pos, sample.x), run.predict(sample.pos, sample.x), rtol=1e-4,
                               atol=1e-6)


def test_train_from_python_equals_the_trained_run(shared, loaded, tmp_path):
    """A dict config + overrides from Python gives the run the fixture trained (same seed, same data)."""
    run, ds, path = loaded
    sample = ds.load(path.relative_to(ds.root).as_posix())
    messages = []
    trained = dsmpnn.train({"train": {"epochs": 1}}, shared[0], tmp_path / "py", overrides=TINY,
                           echo=messages.append)
    assert isinstance(trained, dsmpnn.Run) and trained.epoch == 1
    assert messages[0].startswith("training 1,577 parameters")
    np.testing.assert_allclose(trained.predict(sample.pos, sample.x), run.predict(sample.pos, sample.x),
                               rtol=1e-5, atol=1e-7)
    # a Config, and a YAML file, with overrides; resume continues the run
    cfg = dsmpnn.load_config(None, TINY)
    again = dsmpnn.train(cfg, shared[0], tmp_path / "py", overrides=["train.epochs=2"], resume=True,
                         echo=lambda s: None)
    assert again.epoch == 2 and again.config.train.epochs == 2
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text("train:\n  epochs: 1\n")
    assert dsmpnn.train(yaml_file, shared[0], tmp_path / "yaml", overrides=TINY, echo=lambda s: None).epoch == 1
    with pytest.raises(ConfigError, match="model.hidden"):
        dsmpnn.train({"model": {"hidden": 0}}, shared[0], tmp_path / "bad", echo=lambda s: None)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match=r"config is a int, expected a Config"):
        dsmpnn.train(3, shared[0], tmp_path / "bad")


def test_import_dsmpnn_is_light_and_train_is_both_package_and_function():
    code = ("import sys, dsmpnn\nassert 'torch' not in sys.modules, 'import dsmpnn imported torch'\n"
            "import dsmpnn.train.trainer\nassert callable(dsmpnn.train) and dsmpnn.train.trainer.train\n"
            "from dsmpnn import train, load_run, Run, MeshSample, MeshPrediction, Config, errors\n"
            "assert train is dsmpnn.train and set(dsmpnn.__all__) <= set(dir(dsmpnn))\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def readme_python_block(section: str) -> str:
    """The first ```python block after the README heading ``section``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = text[text.index(f"### {section}\n"):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def test_readme_example(tmp_path, monkeypatch):
    """The README's "Python API" example, run as it is written there."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_python_block("Python API"), "README.md (Python API)", "exec"), scope)  # noqa: S102
    run, y = scope["run"], scope["y"]
    assert run.epoch == 2 and y.shape == (64, 1)
