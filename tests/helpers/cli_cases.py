"""The machinery of the command-line bad-input tests: good inputs shared by the session, ways to break them, and
:func:`run_case`, which runs one case through ``dsmpnn.cli.main`` and checks the contract: exit 2, one line naming
the file or field and what was expected, no traceback, no partial output."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from dsmpnn.cli import main
from dsmpnn.data import Dataset
from dsmpnn.train.checkpoint import list_checkpoints, load_checkpoint

TINY = ["model.hidden=8", "model.layers=2", "model.kernel_hidden=[8]", "model.encoder_hidden=[8]",
        "model.decoder_hidden=[8]", "graph.radius=0.3", "graph.sample_nodes=48", "train.batch_graphs=2",
        "eval.plot_samples=0"]


@dataclass
class World:
    """The shared good inputs (read-only) and a per-case scratch directory."""

    data: Path
    run: Path
    tmp: Path

    @property
    def sample(self) -> Path:
        return self.data / Dataset(self.data).split("test")[0]

    def subs(self) -> dict[str, str]:
        return {"data": str(self.data), "run": str(self.run), "tmp": str(self.tmp), "sample": str(self.sample)}

    def copy_data(self) -> Path:
        shutil.copytree(self.data, self.tmp / "data")
        return self.tmp / "data"

    def copy_run(self) -> Path:
        shutil.copytree(self.run, self.tmp / "run")
        return self.tmp / "run"


# --- how the cases break things -----------------------------------------------------------------------------------


def first_train_file(data: Path) -> Path:
    return data / Dataset(data).split("train")[0]


def rewrite_npz(path: Path, **changes) -> None:
    """Replace (value) or delete (None) arrays of a sample file; ``rename={'old': 'new'}`` renames one."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for old, new in changes.pop("rename", {}).items():
        arrays[new] = arrays.pop(old)
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v(arrays) if callable(v) else v
    path.unlink()
    np.savez(path, **arrays)


def with_value(key: str, index: tuple, value: float) -> Callable[[dict], np.ndarray]:
    def change(arrays: dict) -> np.ndarray:
        a = arrays[key].copy()
        a[index] = value
        return a
    return change


def break_sample(**changes) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        path = first_train_file(w.copy_data())
        rewrite_npz(path, **changes)
        return {"file": str(path)}
    return setup


def duplicate_nodes(w: World) -> dict:
    path = first_train_file(w.copy_data())

    def dup(arrays):
        pos = arrays["pos"].copy()
        pos[[9, 20]] = pos[4]
        return pos
    rewrite_npz(path, pos=dup)
    return {"file": str(path)}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_sample(w: World) -> dict:
    path = first_train_file(w.copy_data())
    truncate(path)
    return {"file": str(path)}


def bad_val_sample(w: World) -> dict:
    data = w.copy_data()
    path = data / Dataset(data).split("val")[0]
    rewrite_npz(path, y=with_value("y", (5, 0), np.inf))
    return {"file": str(path)}


def edit_manifest(change: Callable[[dict], None] | str) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        path = w.copy_data() / "manifest.json"
        if isinstance(change, str):
            path.write_text(change)
        else:
            obj = json.loads(path.read_text())
            change(obj)
            path.write_text(json.dumps(obj))
        return {"file": str(path)}
    return setup


def edit_run_config(section: str, key: str, value) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        path = w.copy_run() / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg[section][key] = value
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return {"file": str(path)}
    return setup


def drop_checkpoints(w: World) -> dict:
    run = w.copy_run()
    shutil.rmtree(run / "checkpoints")
    return {}


def corrupt_checkpoints(w: World) -> dict:
    for path in list_checkpoints(w.copy_run() / "checkpoints"):
        truncate(path)
    return {}


def future_checkpoint(w: World) -> dict:
    """The newest checkpoint rewritten as dsmpnn 9.0.0 would write it (valid checksum)."""
    state, path = load_checkpoint(w.copy_run() / "checkpoints")
    buf = io.BytesIO()
    torch.save({**state, "version": "9.0.0"}, buf)
    payload = buf.getvalue()
    torch.save({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)
    return {}


def corrupt_run_meta(w: World) -> dict:
    (w.copy_run() / "dataset.json").write_text('{"path": ')
    return {}


def parent_is_a_file(w: World) -> dict:
    (w.tmp / "file").write_text("not a directory")
    return {}


def config_file(text: str) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        (w.tmp / "c.yaml").write_text(text)
        return {}
    return setup


def predict_input_wrong_fields(w: World) -> dict:
    rng = np.random.default_rng(0)
    np.savez(w.tmp / "mesh.npz", pos=rng.random((30, 2)), x=rng.random((30, 3)))
    return {}


def grid_file(**arrays) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        np.savez(w.tmp / "g.npz", **{k: v() if callable(v) else v for k, v in arrays.items()})
        return {}
    return setup


def grid_with_nan() -> np.ndarray:
    y = np.zeros((3, 4, 5))
    y[1, 2, 2] = np.nan
    return y


def truncated_grid(w: World) -> dict:
    np.savez(w.tmp / "g.npz", x=np.ones((3, 4, 5)), y=np.ones((3, 4, 5)))
    truncate(w.tmp / "g.npz")
    return {}


def airfrans(manifest: str | None, drop: str | None = None) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        from tests.data.test_airfrans import CASE, write_case

        src = w.tmp / "airfrans"
        src.mkdir()
        if drop is not None:
            write_case(src, drop=drop)
            manifest_text = json.dumps({"full_train": [CASE], "full_test": []})
        else:
            manifest_text = manifest
        if manifest_text is not None:
            (src / "manifest.json").write_text(manifest_text)
        return {"case": CASE}
    return setup


@dataclass
class Case:
    argv: list[str]  # templates: {data} {run} {tmp} {sample} and what setup returns
    fragments: list[str]  # each must appear in the message (templates too)
    outputs: list[str]  # paths that must not change (absent before: still absent)
    setup: Callable[[World], dict] | None = None
    extra: dict = field(default_factory=dict)


TRAIN = ["train", "--no-progress", "--data", "{data}", "--out", "{tmp}/new", *TINY]
TRAIN_COPY = ["train", "--no-progress", "--data", "{tmp}/data", "--out", "{tmp}/new", *TINY]
RESUME = ["train", "--no-progress", "--resume", "--data", "{data}", "--out", "{tmp}/run", *TINY]
NEW = ["{tmp}/new"]


def snapshot(path: Path) -> dict[str, str] | None:
    """Content hashes of a file or of every file under a directory; None when absent."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run_case(case: Case, world: World, capsys) -> str:
    """Run ``case`` in ``world``; assert exit 2, one ``dsmpnn <command>: error:`` line with every fragment, no
    traceback and unchanged outputs. Returns the error line."""
    subs = world.subs()
    if case.setup is not None:
        subs.update(case.setup(world))
    argv = [a.format(**subs) for a in case.argv]
    outputs = [Path(o.format(**subs)) for o in case.outputs]
    before = [snapshot(o) for o in outputs]
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    command = argv[0]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith(f"dsmpnn {command}: warning: ")]
    assert len(errors) == 1 and errors[0].startswith(f"dsmpnn {command}: error: "), err  # one paragraph
    for fragment in case.fragments:
        assert fragment.format(**subs) in errors[0], (fragment.format(**subs), errors[0])
    assert [snapshot(o) for o in outputs] == before, "partial output left behind"
    return errors[0]


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds``: a case that blocks (on a FIFO, a device, a hang)
    fails instead of hanging the suite."""
    def expire(signum, frame):  # noqa: ANN001 - signal handler signature
        raise TimeoutError(f"the case did not finish within {seconds} s (blocked on a FIFO or device, or a hang?)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
