"""Accuracy of the fused kernels' GELU and SiLU (values and slopes) against a 40-digit truth (mpmath).

    python benchmarks/activation_accuracy.py [--points 12801]

Inputs: 801 points on [-100, 100] and ``--points`` on [-16, 16], rounded to each dtype. Prints, for float32 and
float64, the largest relative error of the values where they exceed 1e-30 (float32) or the smallest normal number
(float64), the largest error of the slopes relative to the scale of their two terms (what the tests bound), and
the same for PyTorch's own functional GELU/SiLU of that dtype. tests/nn/kernels/test_native.py asserts the bounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dsmpnn.nn.kernels import native

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/helpers/oracles.py
from tests.helpers.oracles import smooth_activation_truth  # noqa: E402


def kernel_act(act: str, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """act(a) and act'(a) through one fused chunk (one identity layer, Q = I)."""
    e, k = a.shape[0], 8
    feats = a.repeat_interleave(k).view(e, k)
    layers = [native.Layer(torch.eye(k, dtype=a.dtype), torch.zeros(k, dtype=a.dtype), act)]
    q = torch.eye(k, dtype=a.dtype).unsqueeze(0)
    deg, nodes, dst = torch.tensor([e]), torch.tensor([0]), torch.arange(e)
    out, ga = torch.zeros(e, k, dtype=a.dtype), torch.zeros(e, k, dtype=a.dtype)
    native.FusedPass(native.kernels(), q, None, k, layers, out=out).chunk(deg, nodes, dst, None, feats, None)
    native.FusedPass(native.kernels(), q, None, k, layers, g=torch.ones(e, k, dtype=a.dtype),
                     need_dh=True).chunk(deg, nodes, dst, None, feats, None, ga)
    return out[:, 0].double(), ga[:, 0].double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=12801)
    args = p.parse_args()
    if native.kernels() is None:
        raise SystemExit("the fused kernels are unavailable here (no compiler?)")
    grid = torch.cat([torch.linspace(-100, 100, 801, dtype=torch.float64),
                      torch.linspace(-16, 16, args.points, dtype=torch.float64)])
    for dtype in (torch.float32, torch.float64):
        a = grid.to(dtype)
        floor = 1e-30 if dtype == torch.float32 else torch.finfo(dtype).tiny
        for act in ("gelu", "silu"):
            value, slope, scale = (torch.from_numpy(v) for v in smooth_activation_truth(act, a.double().numpy()))
            kv, ks = kernel_act(act, a)
            tv = getattr(torch.nn.functional, act)(a).double()
            a_req = a.clone().requires_grad_()
            (ts,) = torch.autograd.grad(getattr(torch.nn.functional, act)(a_req).sum(), a_req)
            keep, keep_s = value.abs() > floor, scale > floor

            def rel(got, truth, size, mask):
                return float(((got - truth).abs() / size)[mask].max())
            print(f"{str(dtype):14s} {act}: kernels value {rel(kv, value, value.abs(), keep):.2e}, "
                  f"slope {rel(ks, slope, scale, keep_s):.2e} | PyTorch value "
                  f"{rel(tv, value, value.abs(), keep):.2e}, slope {rel(ts.double(), slope, scale, keep_s):.2e}")


if __name__ == "__main__":
    main()
