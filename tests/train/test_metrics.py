import numpy as np
import pytest

from dsmpnn.train.metrics import compute_metrics


def test_metrics_hand_checked():
    t1, p1 = np.array([[3.0, 0.0], [4.0, 1.0]]), np.array([[3.0, 0.0], [4.0, 2.0]])
    t2, p2 = np.array([[1.0, 1.0]]), np.array([[2.0, 1.0]])
    m = compute_metrics([p1, p2], [t1, t2], ["u", "p"])
    assert m["rmse"]["u"] == pytest.approx(np.sqrt(1 / 3)) and m["rmse"]["p"] == pytest.approx(np.sqrt(1 / 3))
    rel1, rel2 = 1 / np.sqrt(26), 1 / np.sqrt(2)
    assert m["rel_l2"] == pytest.approx((rel1 + rel2) / 2)
    assert m["rel_l2_per_field"]["u"] == pytest.approx((0 + 1) / 2)
    assert m["n_samples"] == 2
