r"""NACA 4- and 5-digit airfoils (chord 1, leading edge at the origin) and the signed distance to a polygon.

Thickness (closed trailing edge, the last coefficient -0.1036 instead of -0.1015), ``t`` = max thickness / chord:

.. math::  y_t(x) = 5t\,(0.2969\sqrt{x} - 0.1260x - 0.3516x^2 + 0.2843x^3 - 0.1036x^4)

Camber line ``y_c``: 4-digit ``MPXX`` (``m = M/100``, ``p = P/10``)

.. math::  y_c = \frac{m}{p^2}(2px - x^2),\ x < p; \qquad y_c = \frac{m}{(1-p)^2}(1 - 2p + 2px - x^2),\ x \ge p

and 5-digit ``LP0XX`` (standard, non-reflex camber; design lift ``0.15 L``, maximum camber near ``x = P/20``)

.. math::  y_c = \frac{L}{2}\frac{k_1}{6}(x^3 - 3rx^2 + r^2(3 - r)x),\ x < r; \qquad
           y_c = \frac{L}{2}\frac{k_1 r^3}{6}(1 - x),\ x \ge r

with the tabulated ``(r, k_1)`` of ``P = 1..5``. The surfaces are ``(x \mp y_t \sin\theta, y_c \pm y_t \cos\theta)``,
``\theta = \arctan y_c'``, sampled with cosine spacing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["naca_polygon", "random_naca_code", "polygon_signed_distance"]

# 5-digit standard camber lines: P -> (r, k1) for design lift coefficient 0.3 (L = 2)
_FIVE_DIGIT = {1: (0.0580, 361.4), 2: (0.1260, 51.64), 3: (0.2025, 15.957), 4: (0.2900, 6.643), 5: (0.3910, 3.230)}


def _camber(code: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camber line ``y_c(x)`` and slope ``y_c'(x)`` of a NACA code, both ``[n]``."""
    if len(code) == 4:
        m, p = int(code[0]) / 100, int(code[1]) / 10
        if m == 0 or p == 0:
            return np.zeros_like(x), np.zeros_like(x)
        front = x < p
        yc = np.where(front, m / p**2 * (2 * p * x - x**2), m / (1 - p) ** 2 * (1 - 2 * p + 2 * p * x - x**2))
        dyc = np.where(front, 2 * m / p**2 * (p - x), 2 * m / (1 - p) ** 2 * (p - x))
        return yc, dyc
    scale, (r, k1) = int(code[0]) / 2, _FIVE_DIGIT[int(code[1])]
    front = x < r
    yc = scale * np.where(front, k1 / 6 * (x**3 - 3 * r * x**2 + r**2 * (3 - r) * x), k1 * r**3 / 6 * (1 - x))
    dyc = scale * np.where(front, k1 / 6 * (3 * x**2 - 6 * r * x + r**2 * (3 - r)), -k1 * r**3 / 6)
    return yc, dyc


def _check_code(code: str) -> str:
    code = code.upper().removeprefix("NACA").strip()
    ok4 = len(code) == 4 and code.isdigit() and (code[0] == "0") == (code[1] == "0")
    ok5 = len(code) == 5 and code.isdigit() and code[0] != "0" and code[1] in "12345" and code[2] == "0"
    if not (ok4 or ok5) or int(code[-2:]) == 0:
        raise ValueError(f"NACA code {code!r}: expected 4 digits MPXX (M = 0 iff P = 0) or 5 digits LP0XX "
                         "(L >= 1, P in 1..5, non-reflex), with thickness XX > 0")
    return code


def naca_polygon(code: str, n_side: int = 60) -> np.ndarray:
    """Closed airfoil outline ``[2 n_side - 2, 2]``, counter-clockwise from the trailing edge ``(1, 0)``.

    Goes along the upper surface to the leading edge ``(0, 0)`` and back along the lower surface; the trailing
    edge point is not repeated. ``n_side`` points per surface with cosine spacing (fine at both edges).
    """
    code = _check_code(code)
    if n_side < 4:
        raise ValueError(f"n_side is {n_side}, expected at least 4 points per surface")
    x = 0.5 * (1 - np.cos(np.linspace(0.0, np.pi, n_side)))  # [n] from LE to TE
    t = int(code[-2:]) / 100
    yt = 5 * t * (0.2969 * np.sqrt(x) - 0.1260 * x - 0.3516 * x**2 + 0.2843 * x**3 - 0.1036 * x**4)
    yc, dyc = _camber(code, x)
    theta = np.arctan(dyc)
    upper = np.stack([x - yt * np.sin(theta), yc + yt * np.cos(theta)], axis=1)  # [n, 2]
    lower = np.stack([x + yt * np.sin(theta), yc - yt * np.cos(theta)], axis=1)
    upper[-1] = lower[-1] = (1.0, 0.0)  # closed trailing edge exactly at (1, 0)
    lower[0] = upper[0] = (0.0, 0.0)
    return np.concatenate([upper[::-1][:-1], lower[:-1]])  # TE -> upper -> LE -> lower (TE not repeated)


def random_naca_code(rng: np.random.Generator) -> str:
    """A random 4-digit (``M`` 0–7, ``P`` 1–7, ``XX`` 6–20) or 5-digit (``L`` 1–4, ``P`` 1–5, ``XX`` 6–20) code."""
    xx = int(rng.integers(6, 21))
    if rng.random() < 0.5:
        m = int(rng.integers(0, 8))
        p = int(rng.integers(1, 8)) if m else 0
        return f"{m}{p}{xx:02d}"
    return f"{int(rng.integers(1, 5))}{int(rng.integers(1, 6))}0{xx:02d}"


def _segments(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = poly
    return a, np.roll(a, -1, axis=0) - a  # starts [M, 2], directions [M, 2] (closed polygon)


def polygon_signed_distance(points: np.ndarray, poly: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Distance ``[N]`` from ``points [N, 2]`` to a closed polygon ``[M, 2]``: positive outside, negative inside."""
    a, d = _segments(poly)
    dd = np.maximum((d**2).sum(1), np.finfo(float).tiny)  # [M]
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk, None, :]  # [n, 1, 2]
        t = np.clip(((p - a) * d).sum(-1) / dd, 0.0, 1.0)  # [n, M] projection onto each segment
        dist = np.sqrt((((a + t[..., None] * d) - p) ** 2).sum(-1)).min(1)  # [n]
        y0, y1 = a[:, 1], a[:, 1] + d[:, 1]  # even-odd rule with a ray towards +x
        crosses = (y0 > p[..., 1]) != (y1 > p[..., 1])  # [n, M]
        xint = a[:, 0] + (p[..., 1] - y0) / np.where(d[:, 1] == 0, 1.0, d[:, 1]) * d[:, 0]
        inside = (crosses & (p[..., 0] < xint)).sum(1) % 2 == 1
        out[s:s + chunk] = np.where(inside, -dist, dist)
    return out
