"""Exceptions that carry a user-facing message.

Every error a user can cause (bad file, bad field, bad config, bad option) is raised as a subclass of
:class:`DsmpnnError`. The CLI prints its message and exits with status 2, without a traceback.
"""

from __future__ import annotations

__all__ = ["DsmpnnError", "DatasetError", "ConfigError", "GraphError", "CheckpointError", "Interrupted"]


class DsmpnnError(Exception):
    """Base class for errors caused by user input; the message says what was expected.

    ``quiet`` is set on the ranks other than 0 of a distributed run when every rank raises the same error
    (see :func:`dsmpnn.distributed.agree.run_agreed`): rank 0 prints it, the others exit with the same status
    silently, so P ranks do not print P copies.
    """

    quiet: bool = False


class DatasetError(DsmpnnError, ValueError):
    """A dataset file or manifest is missing, malformed or inconsistent."""


class ConfigError(DsmpnnError, ValueError):
    """A configuration key, value or override is invalid."""


class GraphError(DsmpnnError, ValueError):
    """A graph cannot be built as asked (radius too large, isolated nodes, too many ranks...)."""


class CheckpointError(DsmpnnError, RuntimeError):
    """A run directory or checkpoint is missing, corrupt or incompatible."""


class Interrupted(DsmpnnError):
    """Work stopped on request (Ctrl-C / SIGTERM) after saving what is needed to continue; the CLI exits 130."""
