"""3D backward-facing-step generator at tiny size."""

import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data.dataset import Dataset
from dsmpnn.data.step3d import LENGTH, StepCase, inlet_profile, step_flow


def test_step_flow_sample():
    case = StepCase(speed=0.8, step_height=0.3)
    sample, sol = step_flow(case, resolution=3)
    assert sol.converged and sol.relative_residual < 1e-10
    n = sample.num_nodes
    assert sample.pos.shape == (n, 3) and sample.x.shape == (n, 3) and sample.y.shape == (n, 4)
    assert sample.cell_type == "tetra"
    np.testing.assert_allclose(sample.x[:, :2], np.broadcast_to([0.8, 0.3], (n, 2)))
    wall = sample.x[:, 2] == 1
    np.testing.assert_allclose(sample.y[wall, :3], 0.0, atol=1e-12)  # no slip
    inlet = np.isclose(sample.pos[:, 0], 0.0) & ~wall
    assert inlet.any()
    np.testing.assert_allclose(sample.y[inlet, :3], inlet_profile(sample.pos[inlet].T, case).T, atol=1e-12)
    assert sample.pos[:, 1][np.isclose(sample.pos[:, 0], 0.0)].min() == pytest.approx(0.3)  # step face at x = 0
    outlet = np.isclose(sample.pos[:, 0], LENGTH) & ~wall
    assert np.all(sample.y[outlet, 0] > 0)  # flow leaves through the outlet


@pytest.mark.slow
def test_cli_generate_step3d(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["generate", "step3d", "--n", "2", "--resolution", "3", "--out", str(out), "--seed", "0",
                 "--split", "0.5,0.5,0", "--no-progress"]) == 0
    assert "wrote step3d (resolution 3)" in capsys.readouterr().out
    ds = Dataset(out)
    s = ds.load_split("train")[0]
    assert ds.manifest.dim == 3 and s.y.shape[1] == 4
    assert [f.name for f in ds.manifest.target_fields] == ["u", "v", "w", "p"]
