"""Per-rank programs of tests/distributed/test_train_ds.py (module level, so spawned ranks can import them)."""

from __future__ import annotations

from pathlib import Path

from dsmpnn.distributed import DistContext, run_agreed
from dsmpnn.errors import DsmpnnError, Interrupted
from dsmpnn.train import evaluate_run, load_config, train
from dsmpnn.train import trainer as trainer_module


class StopAfter:
    """A StopRequest whose flag turns true at its ``reads + 1``-th read (a SIGINT arriving on one rank only)."""

    def __init__(self, reads: int) -> None:
        self.reads = reads

    @property
    def requested(self) -> bool:
        self.reads -= 1
        return self.reads < 0

    def __enter__(self) -> "StopAfter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def interrupted_then_resumed(ctx: DistContext, data: str, out: str, overrides: list[str], stop_rank: int,
                             stop_after: int) -> dict:
    """Train until rank ``stop_rank`` alone asks to stop, resume to the end, evaluate; what each rank saw."""
    cfg = load_config(None, overrides)
    original = trainer_module.StopRequest
    trainer_module.StopRequest = lambda: StopAfter(stop_after if ctx.rank == stop_rank else 10**9)
    try:
        train(cfg, data, out, progress=False, echo=lambda s: None, ctx=ctx)
        stopped = None
    except Interrupted as e:
        stopped = {"message": str(e), "quiet": e.quiet}
    finally:
        trainer_module.StopRequest = original
    checkpoints = sorted(p.name for p in (Path(out) / "checkpoints").iterdir())
    record = train(cfg, data, out, resume=True, progress=False, echo=lambda s: None, ctx=ctx)
    metrics = evaluate_run(out, plots=False, echo=lambda s: None, ctx=ctx)

    def fail_on_rank_1() -> int:
        if ctx.rank == 1:
            raise DsmpnnError("only rank 1 cannot read its file")
        return ctx.rank

    try:
        run_agreed(fail_on_rank_1)
        agreed = None
    except DsmpnnError as e:
        agreed = {"message": str(e), "quiet": e.quiet}
    return {"stopped": stopped, "checkpoints_after_stop": checkpoints, "record": record, "metrics": metrics,
            "agreed": agreed}
