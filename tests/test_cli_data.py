"""``dsmpnn generate darcy`` and ``dsmpnn import grid`` through ``dsmpnn.cli.main``."""

import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data.dataset import Dataset


def test_generate_darcy(tmp_path, capsys):
    out = tmp_path / "darcy"
    code = main(["generate", "darcy", "--n", "5", "--resolution", "12", "--out", str(out), "--seed", "3",
                 "--split", "0.6,0.2,0.2", "--no-progress"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "wrote 5 Darcy samples" in stdout and "train 3, val 1, test 1" in stdout and str(out) in stdout
    ds = Dataset(out)
    s = ds.load_split("test")[0]
    assert s.x.shape == (144, 5) and s.y.shape == (144, 1)
    assert [f.name for f in ds.manifest.input_fields] == ["a", "boundary", "a_smooth", "a_smooth_dx", "a_smooth_dy"]


def test_import_grid(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "g.npz", coeff=rng.random((4, 5, 6)), sol=rng.random((4, 5, 6, 2)))
    out = tmp_path / "imported"
    assert main(["import", "grid", str(tmp_path / "g.npz"), "--out", str(out), "--split", "0.5,0.5,0"]) == 0
    stdout = capsys.readouterr().out
    assert "imported 4 samples (train 2, val 2" in stdout and "targets sol_0, sol_1" in stdout
    assert Dataset(out).load_split("val")[0].y.shape == (30, 2)


@pytest.mark.parametrize("argv, fragments", [
    (["import", "grid", "{tmp}/missing.npz", "--out", "{tmp}/o"], ["missing.npz: file does not exist"]),
    (["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o", "--x-key", "zz"], ["g.npz", "no input key 'zz'"]),
    (["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o", "--split", "0.5,0.5"], ["split", "expected 3"]),
    (["generate", "darcy", "--n", "0", "--out", "{tmp}/o"], ["--n is 0"]),
])
def test_bad_input_exits_2_with_message(tmp_path, capsys, argv, fragments):
    np.savez(tmp_path / "g.npz", x=np.ones((2, 3, 3)), y=np.ones((2, 3, 3)))
    code = main([a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dsmpnn {argv[0]}: error: ")
    for frag in fragments:
        assert frag in err, (frag, err)
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_sigterm_during_generate_leaves_nothing_behind(tmp_path):
    """`kill` (SIGTERM) while a dataset is being written: exit 130, no dataset and no temporary directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "dsmpnn.cli", "generate", "darcy", "--n", "5000",
                             "--resolution", "16", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".d.tmp-*/samples/*.npz")) and time.monotonic() < deadline:
        time.sleep(0.1)  # until samples are being written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "dsmpnn generate: interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
