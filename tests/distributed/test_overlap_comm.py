"""The halo exchange overlapped with the layers' work (distributed.overlap_comm) on P = 2 and 3 gloo ranks equals one
process: outputs, loss and every parameter gradient, for every partitioner, halo_hops 1 and 2, a neighbour cap, a
geometric overlap, a sampled graph and both collectives; and its backward sends the halo gradients before the interior
edges' backward runs and receives them after. The ranks run in the launches of test_exactness (one per P)."""

import pytest
import torch

from dsmpnn.distributed import max_rel_diff
from dsmpnn.train.check import check
from tests.distributed import workers as W
from tests.distributed.test_exactness import assert_equal_to_single, launch, reference, sampled_reference

pytestmark = pytest.mark.distributed


def cases(P: int, key: str = "exact_overlap"):
    return [pytest.param(P, key, c, id=f"P{P}-{key}-" + "-".join(map(str, c)))
            for k, _, args in W.group_of(P) if k == key for c in args[0]]


@pytest.mark.parametrize("P,key,case", cases(2) + cases(3) + cases(3, "exact_overlap_p2p"))
def test_overlapped_exchange_equals_one_process(P, key, case):
    name, _, _, dtype_name = case
    assert_equal_to_single(launch(P)[0][key][case], reference(name, dtype_name), dtype_name)


def test_overlapped_and_blocking_exchange_agree_to_round_off():
    """The same case with the blocking exchange (test_exactness) and overlapped: only the order of additions differs."""
    case = ("cloud2d", "metis", 2, "float64")
    blocking, overlapped = launch(2)[0]["exact"][case], launch(2)[0]["exact_overlap"][case]
    assert max_rel_diff(overlapped["pred"], blocking["pred"]) <= 1e-13
    assert max(max_rel_diff(overlapped["grads"][n], g) for n, g in blocking["grads"].items()) <= 1e-12


def test_overlapped_geometric_overlap_equals_one_process():
    assert_equal_to_single(launch(2)[0]["overlap_comm_geometric"], reference("cloud2d", "float64"), "float64")


def test_overlapped_sampled_graph_equals_single_process_sampled_graph():
    assert_equal_to_single(launch(3)[0]["sampled_overlap"], sampled_reference(), "float64")


@pytest.mark.parametrize("key", ["backward_order", "backward_order_ckpt"])
def test_backward_sends_halo_gradients_before_the_interior_backward(key):
    """For each of the 3 layers, last first: the boundary edges' backward, the exchange's first half (gradients
    sent), the interior edges' backward, then the second half (gradients received). With checkpoint_layers too."""
    for r in (res[key] for res in launch(2)):
        assert r["interior"] != r["boundary"]
        layer = [r["boundary"], "finish", r["interior"], "start"]
        assert r["log"] == layer * 3, r["log"]


def test_check_with_checkpointed_layers_and_overlapped_exchange():
    """checkpoint_layers recomputes the layer around the exchange's wait: still one process's result, in fp32 too."""
    pos, x, _, r = W.problem("cloud2d")

    def model():
        m = W.model_for(2, torch.float32)
        m.checkpoint_layers = True
        return m

    rep = check(pos, x, model, nproc=2, method="metis", halo_hops=2, dtype=torch.float32, radius=r, overlap_comm=True)
    assert rep["passed"] and rep["overlap_comm"] and rep["grad_max_rel_diff"] <= 1e-5
