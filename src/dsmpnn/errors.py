"""Exceptions that carry a user-facing message.

Every error a user can cause (bad file, bad field, bad config, bad option) is raised as a subclass of
:class:`DsmpnnError`. The CLI prints its message without a traceback and exits with the error's ``exit_code``:
2 for bad input, 1 when a run failed for another reason it can explain (a peer rank hung or died,
:class:`CommunicationError`; the loss diverged, :class:`TrainingDiverged`; a file could not be written,
:class:`WriteError`; an optional package is not installed, :class:`MissingDependency`), 130 after an interruption
(:class:`Interrupted`).
"""

from __future__ import annotations

__all__ = ["DsmpnnError", "DatasetError", "ConfigError", "GraphError", "CheckpointError", "CommunicationError",
           "TrainingDiverged", "WriteError", "MissingDependency", "Interrupted"]


class DsmpnnError(Exception):
    """Base class for errors caused by user input; the message says what was expected.

    ``quiet`` is set on the ranks other than 0 of a distributed run when every rank raises the same error
    (see :func:`dsmpnn.distributed.agree.run_agreed`): rank 0 prints it, the others exit with the same status
    silently, so P ranks do not print P copies.
    """

    quiet: bool = False
    exit_code: int = 2


class DatasetError(DsmpnnError, ValueError):
    """A dataset file or manifest is missing, malformed or inconsistent."""


class ConfigError(DsmpnnError, ValueError):
    """A configuration key, value or override is invalid."""


class GraphError(DsmpnnError, ValueError):
    """A graph cannot be built as asked (radius too large, isolated nodes, too many ranks...)."""


class CheckpointError(DsmpnnError, RuntimeError):
    """A run directory or checkpoint is missing, corrupt or incompatible."""


class CommunicationError(DsmpnnError, RuntimeError):
    """A collective did not complete: a peer rank did not answer within ``distributed.timeout_s`` or its connection
    closed (it died). Not the user's input, so the CLI exits 1; ``dsmpnn train --max-restarts N`` restarts the
    ranks, which resume from the newest checkpoint."""

    exit_code = 1


class TrainingDiverged(DsmpnnError, RuntimeError):
    """The loss, a gradient or a parameter became NaN/Inf; training stopped without saving the broken state, so
    the newest checkpoint is the last good one. The CLI exits 1."""

    exit_code = 1


class WriteError(DsmpnnError, OSError):
    """A file could not be written (disk full, quota exceeded, read-only file system...); the file it would have
    replaced, and every earlier one, is unchanged. An ``OSError`` too, with the original ``errno``. The CLI exits 1."""

    exit_code = 1


class MissingDependency(DsmpnnError, ImportError):
    """A feature needs an optional package that is not installed (e.g. ``model.kind: gcn`` needs torch_geometric);
    the message names the install command. An ``ImportError`` too. Not bad input, so the CLI exits 1."""

    exit_code = 1


class Interrupted(DsmpnnError):
    """Work stopped on request (Ctrl-C / SIGTERM) after saving what is needed to continue; the CLI exits 130."""

    exit_code = 130
