"""DS-MPNN end to end: training, evaluation and prediction on 2 gloo ranks equal one process.

``dsmpnn train/predict --nproc 2`` go through the CLI and torch.distributed's elastic launcher (what users run);
the float64 run (interrupted on one rank, resumed, evaluated) uses ``run_processes`` with ``train(ctx=...)`` and
``evaluate_run(ctx=...)`` (each launch costs seconds of start-up, so one launch does several things).
"""


import re
import numpy as np
import pytest
import torch
import yaml

from dsmpnn.cli import main
from dsmpnn.data import Dataset, generate_darcy
from dsmpnn.distributed import max_rel_diff, run_processes
from dsmpnn.train import evaluate_run, load_config, load_run, predict_file, train
from dsmpnn.train.factory import build_model
from dsmpnn.train.logger import read_jsonl
from tests.distributed import train_workers as W

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TINY = ["model.hidden=8", "model.layers=2", "model.kernel_hidden=[8]", "model.encoder_hidden=[8]",
        "model.decoder_hidden=[8]", "graph.radius=0.25", "graph.sample_nodes=48", "graph.samples_per_mesh=2",
        "train.batch_graphs=2", "train.eval_every=2", "train.checkpoint_every=1", "eval.plot_samples=1",
        "train.epochs=3"]


@pytest.fixture(scope="module")
def darcy(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "darcy"
    generate_darcy(out, n=6, resolution=10, seed=0, splits=(0.5, 0.25, 0.25), progress=False)
    return out


def max_param_diff(a, b) -> float:
    return max(max_rel_diff(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_cli_nproc2_train_predict_equal_one_process(darcy, tmp_path, capfd):
    single, ds = tmp_path / "single", tmp_path / "ds"
    train(load_config(None, TINY), darcy, single, progress=False, echo=lambda s: None)

    assert main(["train", "--data", str(darcy), "--out", str(ds), "--no-progress", "--nproc", "2", *TINY]) == 0
    out = capfd.readouterr().out
    assert "2 ranks (metis partition, halo_hops 1)" in out and out.count("done: epoch 3") == 1  # rank 0 only
    assert yaml.safe_load((ds / "config.yaml").read_text())["distributed"] == {
        "partition": "metis", "halo_hops": 1, "timeout_s": 300.0, "overlap": None, "verify_exchange": False,
        "overlap_comm": False}
    a, b = load_run(single).model, load_run(ds).model
    assert max_param_diff(b, a) <= 1e-5
    torch.manual_seed(0)
    assert max_param_diff(a, build_model(load_config(None, TINY).model, load_run(single).fmap)) > 1e-3  # it moved
    logged, ref = read_jsonl(ds / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1, 2, 3]  # each epoch once: only rank 0 logs
    np.testing.assert_allclose([r["train_loss"] for r in logged], [r["train_loss"] for r in ref], rtol=1e-5)
    assert logged[1]["val_rel_l2"] == pytest.approx(ref[1]["val_rel_l2"], rel=1e-5)
    assert [p.name for p in (ds / "checkpoints").iterdir()] and (ds / "plots" / "loss_curve.png").is_file()

    # predict, with another partitioner and a 2-hop halo
    mesh = darcy / Dataset(darcy).split("test")[0]
    ref_pred = predict_file(ds, mesh, tmp_path / "one.npz", echo=lambda s: None)
    assert main(["predict", str(ds), "--input", str(mesh), "--out", str(tmp_path / "two.npz"), "--nproc", "2",
                 "--partition", "rcb", "--halo-hops", "2"]) == 0
    peaks = re.search(r"peak memory per rank \[GiB\]: ([0-9.]+), ([0-9.]+)\n", capfd.readouterr().out)
    assert peaks and all(0 < float(v) < 64 for v in peaks.groups())  # rank 0 reports both ranks
    with np.load(tmp_path / "two.npz") as z:
        assert z["pred"].shape == ref_pred.shape == (100, 1)
        assert max_rel_diff(torch.from_numpy(z["pred"]), torch.from_numpy(ref_pred)) <= 1e-5
        np.testing.assert_allclose(z["u_error"], z["u"] - z["u_true"])


def test_float64_interrupted_on_one_rank_resumed_evaluated_equals_one_process(darcy, tmp_path):
    """SIGINT seen by rank 1 only: both ranks stop after the same step, rank 0 saves; --resume on both ranks ends
    with the single-process parameters to 1e-10 (float64, rcb, 2-hop halo); distributed evaluation gives the
    single-process metrics."""
    overrides = [*TINY, "train.dtype=float64", "distributed.partition=rcb", "distributed.halo_hops=2",
                 "train.checkpoint_every=100"]
    single, ds = tmp_path / "single", tmp_path / "ds"
    train(load_config(None, overrides), darcy, single, progress=False, echo=lambda s: None)
    ranks = run_processes(W.interrupted_then_resumed, 2, (str(darcy), str(ds), overrides, 1, 4), timeout_s=120)

    # 3 steps per epoch; the 5th read of the flag is the first step of epoch 2
    assert ranks[0]["stopped"]["quiet"] is False and ranks[1]["stopped"]["quiet"] is True  # rank 0 reports
    assert all("interrupted during epoch 2" in r["stopped"]["message"] for r in ranks)
    assert ranks[0]["checkpoints_after_stop"] == ["ckpt_epoch_000001_graphs_000002.pt"]  # epoch 1 and a step
    assert max_param_diff(load_run(ds).model, load_run(single).model) <= 1e-10
    logged, ref = read_jsonl(ds / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    np.testing.assert_allclose([r["train_loss"] for r in logged], [r["train_loss"] for r in ref], rtol=1e-10)
    assert ranks[0]["record"]["train_loss"] == ranks[1]["record"]["train_loss"]  # the same global loss

    # evaluate: distributed full-graph inference; rank 0 returns and writes the metrics
    one = evaluate_run(ds, plots=False, echo=lambda s: None)
    two = ranks[0]["metrics"]
    assert ranks[1]["metrics"] is None and two["ranks"] == 2 and two["n_samples"] == one["n_samples"]
    assert two["rel_l2"] == pytest.approx(one["rel_l2"], rel=1e-10)
    assert two["rmse"]["u"] == pytest.approx(one["rmse"]["u"], rel=1e-10)
    assert two["rel_l2_per_sample"] == pytest.approx(one["rel_l2_per_sample"], rel=1e-10)

    # an error on one rank is raised on all: rank 0 reports it, the other rank is quiet
    assert ranks[0]["agreed"] == {"message": "rank 1: only rank 1 cannot read its file", "quiet": False}
    assert ranks[1]["agreed"] == {"message": "only rank 1 cannot read its file", "quiet": True}
