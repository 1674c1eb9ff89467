"""checkpoint_layers with the halo exchange: P gloo ranks still equal one process (the exchange sits outside the
checkpointed layer, so the recomputation in backward exchanges nothing)."""

import numpy as np
import pytest
import torch

from dsmpnn.train.check import check
from dsmpnn.nn import MPNN

pytestmark = pytest.mark.distributed


def model() -> MPNN:
    torch.manual_seed(0)
    return MPNN(3, 2, 3, hidden=8, layers=3, kernel_hidden=(8,), encoder_hidden=(8,), decoder_hidden=(8,),
                layer_norm=True, checkpoint_layers=True).double()


def test_checkpointed_layers_on_two_ranks_equal_one_process():
    rng = np.random.default_rng(0)
    pos, x = rng.random((80, 2)), rng.standard_normal((80, 3))
    rep = check(pos, x, model, nproc=2, method="rcb", halo_hops=1, dtype=torch.float64, radius=0.25)
    assert rep["passed"] and rep["grad_max_rel_diff"] <= 1e-10 and rep["output_max_rel_diff"] <= 1e-10
