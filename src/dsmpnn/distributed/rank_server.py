"""Imported by the fork server of :class:`dsmpnn.distributed.launch.RankLauncher`, and only there.

It moves the server into a session of its own (the ranks forked from it follow: a Ctrl-C at the terminal reaches
the launcher alone, which forwards it once, like torchrun's ``start_new_session`` workers), then imports the
modules named in ``DSMPNN_RANK_PRELOAD`` and loads the fused kernels, so that every rank forked from it starts with
them in memory. Nothing here starts a thread: forking stays safe.
"""

from __future__ import annotations

import importlib
import os

from dsmpnn.startup_trace import mark


def _preload() -> None:
    os.setsid()
    for name in filter(None, os.environ.pop("DSMPNN_RANK_PRELOAD", "").split(",")):
        importlib.import_module(name)
    mark("modules imported", who="fork server")
    try:
        from dsmpnn.nn.native import kernels

        kernels()  # compiled or found in the cache, and loaded: one build for all ranks
    except Exception:  # noqa: BLE001 - a rank that needs them reports the problem itself
        pass
    mark("kernels loaded", who="fork server")


if os.environ.get("DSMPNN_RANK_PRELOAD") is not None:
    _preload()
