"""Generate -> train -> evaluate -> predict on a tiny Darcy set, and resume equals an uninterrupted run."""

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
import shutil

import meshio
import numpy as np
import pytest
import torch

from dsmpnn.cli import main
from dsmpnn.data import Dataset, generate_darcy
from dsmpnn.train import evaluate_run, load_config, load_run, train
from dsmpnn.train.checkpoint import load_checkpoint
from dsmpnn.train.inference import predict_sample
from dsmpnn.train.logger import read_jsonl

pytestmark = pytest.mark.slow

TINY = ["model.hidden=8", "model.layers=2", "model.kernel_hidden=[8]", "model.encoder_hidden=[8]",
        "model.decoder_hidden=[8]", "graph.radius=0.25", "graph.sample_nodes=48", "graph.samples_per_mesh=2",
        "train.batch_graphs=2", "train.eval_every=2", "train.checkpoint_every=1", "eval.plot_samples=1"]


@pytest.fixture(scope="module")
def darcy(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "darcy"
    generate_darcy(out, n=8, resolution=12, seed=0, splits=(0.5, 0.25, 0.25), progress=False)
    return out


def test_cli_train_evaluate_predict(darcy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(darcy), "--out", str(run), "--no-progress", "train.epochs=3", *TINY]) == 0
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) for r in records) and "val_rel_l2" in records[1]
    assert (run / "plots" / "loss_curve.png").stat().st_size > 1000
    assert list((run / "tb").iterdir())

    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["rmse"]) == {"u"} and 0 < metrics["rel_l2"] < 10 and metrics["n_samples"] == 2
    assert "relative L2" in capsys.readouterr().out
    assert len(list((run / "plots").glob("test_*.png"))) == 1

    sample_file = darcy / Dataset(darcy).split("test")[0]
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(sample_file), "--out", str(tmp_path / "p.npz")]) == 0
    out = capsys.readouterr().out
    peak = re.search(r"peak memory per rank \[GiB\]: ([0-9.]+)\n", out)  # one process
    assert peak and 0 < float(peak.group(1)) < 64
    # said before the wait, then where the time went
    assert f"{sample_file.name} in " in out and "144 nodes; predicting on the full radius graph" in out
    assert out.index("predicting on") < out.index("wrote ") and re.search(r"seconds: read [0-9.]+, graph \+ model", out)
    with np.load(tmp_path / "p.npz") as f:
        z = dict(f)
        assert z["pred"].shape == (144, 1)
        np.testing.assert_allclose(z["u_error"], z["u"] - z["u_true"])
    assert main(["predict", str(run), "--input", str(sample_file), "--out", str(tmp_path / "p.vtu")]) == 0
    mesh = meshio.read(tmp_path / "p.vtu")
    np.testing.assert_allclose(mesh.point_data["u"], z["u"], rtol=1e-6)
    assert mesh.cells[0].type == "quad"

    # a VTU mesh with the input fields as point data is accepted as input
    assert main(["predict", str(run), "--input", str(tmp_path / "p.vtu"), "--out", str(tmp_path / "q.npz")]) == 0
    with np.load(tmp_path / "q.npz") as q:
        np.testing.assert_allclose(q["u"], z["u"], rtol=1e-5, atol=1e-7)

    # training again into the same run directory is refused; a wrong output suffix too
    assert main(["train", "--data", str(darcy), "--out", str(run), "train.epochs=1", *TINY]) == 2
    assert main(["predict", str(run), "--input", str(sample_file), "--out", str(tmp_path / "p.txt")]) == 2
    assert "already holds a trained run" in capsys.readouterr().err


def test_cli_train_evaluate_predict_with_input_edge_features(darcy, tmp_path, capsys):
    """``graph.edge_features=inputs`` end to end: the run's config keeps it, so evaluate, predict and load_run
    rebuild the model with edge kernels of d + 1 + 2F = 13 inputs (Darcy: F = 5 input fields); a resume cannot
    change it."""
    run = tmp_path / "run"
    args = ["--data", str(darcy), "--out", str(run), "--no-progress", *TINY, "graph.edge_features=inputs"]
    assert main(["train", *args, "train.epochs=2"]) == 0
    loaded = load_run(run)
    assert loaded.cfg.graph.edge_features == "inputs" and loaded.fmap.edge_dim == 13
    assert loaded.model.convs[0].kernel_hidden[0].in_features == 13
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["rel_l2"] < 10 and metrics["n_samples"] == 2
    data = Dataset(darcy)
    sample_file = darcy / data.split("test")[0]
    assert main(["predict", str(run), "--input", str(sample_file), "--out", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as z:
        full = z["pred"]
    assert full.shape == (144, 1) and np.isfinite(full).all()
    sampled = dataclasses.replace(loaded.cfg, eval=dataclasses.replace(loaded.cfg.eval, mode="sampled", samples=3))
    pred = predict_sample(loaded.model, loaded.fmap, data.load(data.split("test")[0]), sampled)
    assert pred.shape == (144, 1) and np.isfinite(pred).all() and not np.allclose(pred, full)
    capsys.readouterr()
    assert main(["train", "--resume", *args, "train.epochs=3", "graph.edge_features=geometry"]) == 2
    assert "--resume changes graph.edge_features from 'inputs'" in capsys.readouterr().err


def test_resume_equals_uninterrupted(darcy, tmp_path):
    """A run killed after epoch 2 (newer checkpoints lost) and resumed ends with the same parameters and log."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    cfg = load_config(None, ["train.epochs=4", *TINY])
    train(cfg, darcy, straight, progress=False, echo=lambda s: None)
    state, _ = load_checkpoint(straight / "checkpoints")  # what a checkpoint holds
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "batch", "partial", "step", "config",
            "version"} <= set(state)
    assert state["epoch"] == 4 and state["step"] == read_jsonl(straight / "metrics.jsonl")[-1]["step"]
    assert state["config"] == cfg.to_dict() and set(state["rng"]) >= {"torch", "numpy", "python"}
    shutil.copytree(straight, resumed)
    for epoch in (3, 4):
        (resumed / "checkpoints" / f"ckpt_epoch_{epoch:06d}.pt").unlink()
    train(cfg, darcy, resumed, resume=True, progress=False, echo=lambda s: None)
    a, b = load_run(straight).model, load_run(resumed).model
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert [r["epoch"] for r in read_jsonl(resumed / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in read_jsonl(resumed / "metrics.jsonl")] == [
        r["train_loss"] for r in read_jsonl(straight / "metrics.jsonl")]


def test_evaluate_refuses_incompatible_dataset(darcy, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, ["train.epochs=1", *TINY]), darcy, run, progress=False, echo=lambda s: None)
    other = tmp_path / "other"
    from dsmpnn.data import Field, MeshSample, write_dataset
    s = MeshSample(np.random.rand(20, 2), np.random.rand(20, 1), np.random.rand(20, 2), name="s")
    write_dataset(other, [("train", s), ("test", s)], [Field("k")], [Field("u"), Field("v")], "other")
    with pytest.raises(Exception, match="differ from the run's"):
        evaluate_run(run, other, echo=lambda s: None)


def test_ctrl_c_saves_checkpoint_and_resume_is_exact(darcy, tmp_path):
    """SIGINT mid-training: exit 130 with a checkpoint; --resume ends equal to an uninterrupted run."""
    args = ["--data", str(darcy), "--no-progress", "train.epochs=6", "train.checkpoint_every=100", *TINY]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", "--out", str(straight), *args]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "dsmpnn.cli", "train", "--out", str(run), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.05)
    while time.time() < deadline and not (run / "metrics.jsonl").read_text():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err
    assert main(["train", "--out", str(run), "--resume", *args]) == 0
    a, b = load_run(straight).model, load_run(run).model
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 7))
