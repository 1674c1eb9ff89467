"""``dsmpnn check`` verifies the training step itself: the trainer's Nyström-sampled batches of epoch 1, built by
the trainer's strategies and run by the one step function, with every partitioner, halo_hops 1 and 2, a
geometric overlap, a neighbour cap, the overlapped and the blocking (default) halo exchange, float32 and float64.
Each check launches one process group (seconds), so the cases are combined into few runs."""

import pytest
import torch

from dsmpnn.cli import main
from dsmpnn.data import generate_darcy
from dsmpnn.train import load_config, train
from dsmpnn.train import check as check_module
from dsmpnn.train import inference, sharding, step, strategy
from dsmpnn.train.check import check_training_step
from dsmpnn.train.logger import read_jsonl

pytestmark = pytest.mark.distributed

RADIUS = 0.2
TINY = ["model.hidden=8", "model.layers=3", "model.kernel_hidden=[8]", "model.encoder_hidden=[8]",
        "model.decoder_hidden=[8]", f"graph.radius={RADIUS}", "graph.sample_nodes=48", "graph.samples_per_mesh=2",
        "train.batch_graphs=2", "train.seed=3"]


@pytest.fixture(scope="module")
def darcy(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "darcy"
    generate_darcy(out, n=4, resolution=12, seed=0, splits=(0.5, 0.25, 0.25), progress=False)  # 2 train meshes
    return out


def assert_passed(rep: dict, dtype: torch.dtype) -> None:
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rep["passed"] and rep["tolerance"] == tol, rep
    assert rep["output_max_rel_diff"] <= tol and rep["grad_max_rel_diff"] <= tol
    assert rep["ranks_same_loss"] and rep["ranks_max_rel_diff"] <= tol  # every rank holds the summed gradient
    assert rep["loss_distributed"] == pytest.approx(rep["loss_single"], rel=tol)
    assert rep["exchange_bytes"] > 0 and rep["halo_fraction"] > 0  # the halo exchange took part


@pytest.mark.parametrize("extra,dtype,steps", [
    # slab, 2-hop halo, a neighbour cap (every rank builds the whole capped graph), the overlapped exchange, float32,
    # two steps
    (["distributed.partition=slab", "distributed.halo_hops=2", "graph.max_neighbors=6",
      "distributed.overlap_comm=true"], torch.float32, 2),
    # METIS, 1-hop halo, a cap, the overlapped exchange, float64
    (["distributed.partition=metis", "distributed.halo_hops=1", "graph.max_neighbors=6",
      "distributed.overlap_comm=true"], torch.float64, 1),
    # the blocking halo exchange (the default), rcb, 2-hop halo, float32
    (["distributed.partition=rcb", "distributed.halo_hops=2"], torch.float32, 1),
], ids=["slab-hops2-cap-overlapped-fp32", "metis-hops1-cap-overlapped-fp64", "rcb-hops2-blocking-fp32"])
def test_check_passes_for_sampled_training_steps(darcy, extra, dtype, steps):
    cfg = load_config(None, [*TINY, *extra])
    rep = check_training_step(darcy, cfg, 2, dtype, steps=steps)
    assert_passed(rep, dtype)
    assert rep["overlap_comm"] == cfg.distributed.overlap_comm  # the step ran with the config's exchange
    assert rep["steps"] == steps and rep["graphs"] == 2 * steps and rep["num_nodes"] == 48 * 2 * steps
    if cfg.graph.max_neighbors is not None:
        assert rep["max_neighbors"] == 6 and rep["num_edges"] <= 6 * rep["num_nodes"]


def test_check_passes_with_input_edge_features(darcy):
    """``graph.edge_features: inputs``: each rank appends the input fields at both ends of its local edges, halo
    rows (two hops of them) included, from the fields it holds; outputs and gradients equal one process."""
    cfg = load_config(None, [*TINY, "graph.edge_features=inputs", "distributed.partition=rcb",
                             "distributed.halo_hops=2"])
    rep = check_training_step(darcy, cfg, 2, torch.float64)
    assert_passed(rep, torch.float64)
    assert rep["graphs"] == 2 and rep["halo_hops"] == 2 and rep["max_neighbors"] is None
    assert set(rep["grad_rel_diff"]) >= {"convs.0.kernel_hidden.0.weight", "convs.2.kernel_hidden.0.weight"}


def test_check_builds_the_trainers_first_step_and_both_call_the_one_step_function(darcy, tmp_path, monkeypatch):
    """The step object of train, predict, check and the strategies is dsmpnn.train.step.run_step; a 1-step
    float64 training run logs the loss that check's one process computes for step 1, and the P ranks (rcb, a
    geometric overlap of one radius) agree with it."""
    for module in (strategy, sharding, inference, check_module):
        assert module.run_step is step.run_step
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backward", True))
        return step.run_step(*args, **kwargs)

    monkeypatch.setattr(strategy, "run_step", counting)  # what SingleProcess.step / DomainDecomposed.step call
    overrides = [*TINY, "train.batch_graphs=4", "train.epochs=1", "train.dtype=float64",
                 "distributed.partition=rcb", f"distributed.overlap={RADIUS}", "distributed.overlap_comm=true"]
    cfg = load_config(None, overrides)
    train(cfg, darcy, tmp_path / "run", progress=False, echo=lambda s: None)
    assert calls == [True]  # one optimizer step (validation predicts through the same run_step, not a step)
    rep = check_training_step(darcy, cfg, 2, torch.float64)
    assert calls == [True, True]  # check's single-process side ran the trainer's step
    assert_passed(rep, torch.float64)
    assert rep["overlap"] == RADIUS and rep["method"] == "rcb" and rep["graphs"] == 4
    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["train_loss"]
    assert rep["loss_single"][0] == pytest.approx(logged, rel=1e-14)  # the same batch, model and step


def test_cli_check_fails_when_the_decomposition_is_not_exact(darcy, capsys):
    """An overlap narrower than the radius drops edges between subdomains: check says FAILED, exit status 1."""
    code = main(["check", "--data", str(darcy), "--nproc", "2", "--partition", "rcb", "--dtype", "float32",
                 *TINY, f"distributed.overlap={RADIUS / 4}"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "2 ranks, rcb, overlap 0.05, float32, blocking halo exchange" in out
    assert "sampled graph(s) of 48 nodes" in out
    assert "> tolerance" in out and out.splitlines()[-1].startswith("FAILED")
