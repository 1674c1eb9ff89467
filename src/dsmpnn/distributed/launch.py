"""Start P local processes that form a process group.

``run_processes(fn, 4, args)`` (tests, ``dsmpnn check``, benchmarks) spawns 4 processes (``torch.multiprocessing``,
start method "spawn"), joins them into a group through a rendezvous file in a fresh temporary directory (no port
to pick), calls ``fn(ctx, *args)`` on each with its :class:`DistContext`, and returns the values in rank order. An
exception on any rank is raised in the caller.

``launch_module("dsmpnn.cli", argv, 4)`` is what ``dsmpnn train --nproc 4`` does: it runs ``dsmpnn.cli.main(ARGV)``
as 4 ranks through torch.distributed's elastic launcher (``elastic_launch``, what ``torchrun --standalone`` runs: a
private rendezvous on a free local port, restarts, signal forwarding), so the ranks are ordinary torchrun workers
that call :func:`init_from_env`. The ranks are forked from a fork server (start method "forkserver") that a
:class:`RankLauncher` starts first: it imports torch and the command's modules once, in the background while the
launching process checks the input, so P ranks start without P imports of torch (seconds each). The fork server
is single-threaded, sits in its own session (a Ctrl-C at the terminal reaches the launcher alone, which forwards it
once, as torchrun's ``start_new_session`` workers), and is stopped when the launch ends.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dsmpnn.errors import DsmpnnError

__all__ = ["run_processes", "launch_module", "RankLauncher", "SHUTDOWN_TIMEOUT_S"]

SHUTDOWN_TIMEOUT_S = 300
"""After Ctrl-C/SIGTERM the launcher forwards the signal to every rank once and waits this long (for the ranks to
finish their step and save a checkpoint) before killing them."""

LAUNCHER_PID_ENV = "DSMPNN_LAUNCHER_PID"
"""The PID of the process that launched the ranks (their fork server's parent), in the ranks' environment."""

PRELOAD_ENV = "DSMPNN_RANK_PRELOAD"
"""Comma-separated modules the fork server of :class:`RankLauncher` imports (read by
:mod:`dsmpnn.distributed.rank_server`)."""


def _worker(rank: int, fn: Callable, nprocs: int, workdir: str, backend: str, timeout_s: float, threads: int,
            args: tuple) -> None:
    import torch

    from dsmpnn.distributed.process_group import destroy_process_group, init_process_group

    torch.set_num_threads(threads)
    ctx = init_process_group(rank, nprocs, f"file://{os.path.join(workdir, 'rendezvous')}", backend, timeout_s)
    try:
        result = fn(ctx, *args)
    finally:
        destroy_process_group()
    with open(os.path.join(workdir, f"result{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_processes(fn: Callable[..., Any], nprocs: int, args: tuple = (), backend: str = "gloo",
                  timeout_s: float | None = None, threads: int = 1) -> list[Any]:
    """``[fn(ctx_0, *args), ..., fn(ctx_{P-1}, *args)]`` computed by P spawned ranks.

    ``fn`` must be importable (a module-level function) and its arguments and result picklable. ``threads``
    sets each rank's intra-op threads (keep P * threads <= cores); ``timeout_s`` the collectives' timeout (None:
    :data:`~dsmpnn.distributed.process_group.DEFAULT_TIMEOUT_S`).
    """
    import torch.multiprocessing as mp

    from dsmpnn.distributed.process_group import DEFAULT_TIMEOUT_S

    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    if nprocs < 1:
        raise DsmpnnError(f"number of processes must be >= 1, got {nprocs}")
    with tempfile.TemporaryDirectory(prefix="dsmpnn-ranks-") as workdir:
        mp.spawn(_worker, args=(fn, nprocs, workdir, backend, timeout_s, threads, args), nprocs=nprocs, join=True)
        results = []
        for rank in range(nprocs):
            with open(os.path.join(workdir, f"result{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    return results


def launch_module(module: str, argv: Sequence[str], nprocs: int, max_restarts: int = 0,
                  threads: int | None = None) -> int:
    """Run ``module.main(list(argv))`` as ``nprocs`` local ranks (torchrun's elastic launcher); the exit status.

    The status is 0 when every rank succeeded, else the exit status of the lowest failing rank (the ranks print
    their own errors), and 130 when this launcher was interrupted (the ranks got the signal once, see
    :data:`SHUTDOWN_TIMEOUT_S`). ``max_restarts``: how often the launcher restarts the whole group after a rank
    fails. ``threads``: intra-op threads per rank (OMP_NUM_THREADS unless set), default cores // nprocs.
    """
    with RankLauncher(nprocs, threads, preload=(module,)) as launcher:
        return launcher.run(module, argv, max_restarts)


class RankLauncher:
    """``with RankLauncher(P, preload=[...]) as l: check(); code = l.run(module, argv)``: P ranks of ``module``.

    Entering sets the ranks' environment (OMP_NUM_THREADS = ``threads``, default cores // P, unless set) and
    starts the fork server, which imports ``preload`` (and torch) while the block does other work; :meth:`run`
    launches the ranks (see :func:`launch_module`). Leaving stops the fork server and restores the environment,
    the signal handlers and the launcher loggers' levels.
    """

    def __init__(self, nprocs: int, threads: int | None = None, preload: Sequence[str] = ()) -> None:
        if nprocs < 1:
            raise DsmpnnError(f"need nprocs >= 1, got {nprocs}")
        self.nprocs, self.threads, self.preload = nprocs, threads, list(preload)

    def __enter__(self) -> RankLauncher:
        self._saved_env = dict(os.environ)
        self._saved_signals = {s: signal.getsignal(s)
                               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
        # the agent's and torch.multiprocessing's chatter ("Terminating process ... via signal SIGTERM")
        self._logs = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
        self._saved_levels = [log.level for log in self._logs]
        os.environ.setdefault("OMP_NUM_THREADS", str(self.threads or max(1, (os.cpu_count() or 1) // self.nprocs)))
        os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
        # a restarted group must not share the agent's TCPStore with the failed one: the workers would read the dead
        # ranks' gloo addresses left in it and fail to connect (pytorch/pytorch#135712)
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        self._server = _start_fork_server(self.preload)  # inherits this environment, stdout and stderr
        return self

    def run(self, module: str, argv: Sequence[str], max_restarts: int = 0) -> int:
        """Launch the ranks, wait for them; the exit status (see :func:`launch_module`)."""
        import uuid

        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        from dsmpnn.startup_trace import mark

        if max_restarts < 0:
            raise DsmpnnError(f"need max_restarts >= 0, got {max_restarts}")
        mark("elastic launcher imported")
        for log in self._logs:  # the ranks report their own errors; keep the launcher's chatter out
            log.setLevel(logging.CRITICAL)
        # what `torchrun --standalone --nproc-per-node P -m module ARGV` configures (a private c10d rendezvous on
        # a free local port), without torchrun's argument parser, which would take ARGV's --nproc for its own
        # (on the loopback address, by number: no name look-up), polling the ranks every 50 ms
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=self.nprocs, run_id=str(uuid.uuid4()),
                              rdzv_endpoint="127.0.0.1:0", rdzv_backend="c10d", max_restarts=max_restarts,
                              monitor_interval=0.05, start_method="forkserver", local_addr="127.0.0.1")
        try:
            if self._server:
                with _main_not_reimported():
                    elastic_launch(config, run_rank)(module, list(argv))
            else:  # no fork server of ours: fresh interpreters, as torchrun starts them
                elastic_launch(config, sys.executable)("-u", "-m", module, *argv)
            return 0
        except ChildFailedError as e:
            rank = min(e.failures)
            code = e.failures[rank].exitcode
            return code if code > 0 else 128 - code  # killed by signal s: 128 + s, as a shell reports it
        except SignalException:
            return 130

    def __exit__(self, *exc: object) -> None:
        _stop_fork_server(self._server)
        for log, level in zip(self._logs, self._saved_levels):
            log.setLevel(level)
        os.environ.clear()
        os.environ.update(self._saved_env)
        for sig, handler in self._saved_signals.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Start processes without ``multiprocessing`` running this process's ``__main__`` (``python -m dsmpnn.cli``,
    the ``dsmpnn`` script, pytest) again in each child as ``__mp_main__``: the ranks' entry point is
    :func:`run_rank`, which lives here. Hides ``__main__.__spec__`` and ``__file__``, where it looks for them."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


def run_rank(module: str, argv: list[str]) -> None:
    """A rank's entry point (in a process forked from the fork server): ``sys.exit(module.main(argv))``, with the
    traceback of an unexpected error on stderr and status 1, as ``python -m module`` would."""
    import importlib
    import traceback

    _name_process(f"dsmpnn rank {os.environ.get('RANK', '?')}")
    for stream in (sys.stdout, sys.stderr):  # what `python -u` gave the ranks: lines appear as they are written
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # before main() could handle it
        code = 130
    except BaseException:  # noqa: BLE001 - the rank's last word; the launcher reports its exit status
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if code:
        sys.exit(code)


def _name_process(name: str) -> None:
    """Show ``name`` for this process in ps/top (Linux ``/proc/PID/comm``, 15 characters); a forked rank would
    otherwise look like its fork server."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _start_fork_server(preload: Sequence[str]) -> bool:
    """Start the fork server of ``multiprocessing`` importing ``preload`` (through
    :mod:`dsmpnn.distributed.rank_server`); False where there is none (not POSIX) or one runs already (then the
    ranks start as ``python -u -m module``, each importing everything itself)."""
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return False  # someone else's fork server: leave it alone and start the ranks with spawn
    os.environ[PRELOAD_ENV] = ",".join(preload)
    try:
        forkserver.set_forkserver_preload(["dsmpnn.distributed.rank_server"])
        forkserver.ensure_running()
    finally:
        del os.environ[PRELOAD_ENV]
    return True


def _stop_fork_server(started: bool) -> None:
    """Stop the fork server :func:`_start_fork_server` started (at once: it may still be importing), so that the
    next launch in this process starts one with its own environment and output streams."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    if not started or pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    stop = getattr(server, "_stop", None)
    if stop is not None:
        stop()  # closes our end of its pipes, reaps it, forgets its address
    forkserver.set_forkserver_preload(["__main__"])
