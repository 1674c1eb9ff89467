"""Writing datasets of solver runs where only converged solutions are kept (airfoil, step3d).

Attempt ``k`` gets its own random generator from ``(seed, k)``; an attempt whose nonlinear solve does not
converge raises :class:`~dsmpnn.data.navier_stokes.ConvergenceError`, is reported on stderr, counted, and replaced
by the next attempt. If fewer than ``n`` samples converge within ``max_attempts``, nothing is written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from dsmpnn.data.dataset import Field, Manifest, write_dataset
from dsmpnn.data.grid import assign_splits
from dsmpnn.data.navier_stokes import ConvergenceError, FlowSolution
from dsmpnn.data.sample import MeshSample
from dsmpnn.errors import ConfigError
from dsmpnn.ranges import SEED_MAX

__all__ = ["GenerationReport", "attempt_rng", "check_solver_options", "write_converged_runs"]

Attempt = Callable[[np.random.Generator], tuple[MeshSample, FlowSolution]]


@dataclass
class GenerationReport:
    """What a generator did: samples written, settings refused, residuals and time."""

    written: int = 0
    skipped: list[str] = field(default_factory=list)  # messages of the refused (unconverged) attempts
    residuals: list[float] = field(default_factory=list)  # final free-DOF residual norm of each saved sample
    relative_residuals: list[float] = field(default_factory=list)  # the same over the initial residual
    seconds: float = 0.0

    def summary(self) -> str:
        if not self.residuals:
            return f"{self.written} samples, {len(self.skipped)} refused"
        return (f"{self.written} samples in {self.seconds:.1f} s ({self.seconds / max(self.written, 1):.2f} s each), "
                f"{len(self.skipped)} unconverged settings refused; nonlinear residual max "
                f"{max(self.residuals):.1e} (relative {max(self.relative_residuals):.1e})")


def attempt_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of attempt ``index``: independent of how many samples are drawn with the same seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def check_solver_options(seed: int, max_newton: int) -> None:
    """Refuse (ConfigError) a seed outside [0, SEED_MAX] or fewer than one Newton iteration, before any solve."""
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed is {seed}, expected an integer in [0, {SEED_MAX}]")
    if max_newton < 1:
        raise ConfigError(f"--max-newton is {max_newton}, expected at least 1 Newton iteration")


def write_converged_runs(out: str | os.PathLike, n: int, attempt: Attempt, input_fields: Sequence[Field],
                         target_fields: Sequence[Field], name: str, description: str, seed: int = 0,
                         splits: Sequence[float] = (0.8, 0.1, 0.1), max_attempts: int | None = None,
                         progress: bool = True) -> tuple[Manifest, GenerationReport]:
    """Run ``attempt(rng)`` until ``n`` samples converged and write them as a dataset (default ``2 n + 5`` tries)."""
    if n < 1:
        raise ConfigError(f"--n is {n}, expected at least 1 sample")
    labels = assign_splits(n, splits, seed)
    attempts = max_attempts if max_attempts is not None else 2 * n + 5
    report = GenerationReport()
    t0 = time.perf_counter()

    def samples() -> Iterator[tuple[str, MeshSample]]:
        bar = tqdm(total=n, desc=name, unit="sample", disable=not progress, leave=False)
        for k in range(attempts):
            if report.written == n:
                break
            try:
                sample, sol = attempt(attempt_rng(seed, k))
            except ConvergenceError as e:
                report.skipped.append(str(e))
                print(f"{name}: skipped attempt {k}: {e}", file=sys.stderr)
                continue
            report.residuals.append(sol.residual)
            report.relative_residuals.append(sol.relative_residual)
            yield labels[report.written], sample
            report.written += 1
            bar.update()
        bar.close()
        if report.written < n:
            raise ConvergenceError(f"{name}: only {report.written} of {n} samples converged in {attempts} attempts "
                                   f"({len(report.skipped)} refused); nothing was written")

    manifest = write_dataset(out, samples(), list(input_fields), list(target_fields), name, description)
    report.seconds = time.perf_counter() - t0
    return manifest, report
