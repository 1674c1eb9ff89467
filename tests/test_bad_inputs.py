"""Bad input through the command line: every case exits 2 with one line naming the file or field and what was
expected, no traceback, and leaves no partial output.

The cases cover the dataset reader, the importers (grid, AirfRANS), configs, run directories and checkpoints,
graph sizes, rank counts and output paths. Each one builds its broken input from a small Darcy set and a run
trained on it for one epoch (shared by the module), then runs ``dsmpnn.cli.main``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dsmpnn.cli import main
from dsmpnn.data import Dataset, generate_darcy
from dsmpnn.train import load_config, train
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


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad")
    data, run = root / "darcy", root / "run"
    generate_darcy(data, n=4, resolution=8, seed=0, splits=(0.5, 0.25, 0.25), progress=False)  # 64 nodes a mesh
    train(load_config(None, [*TINY, "train.epochs=1"]), data, run, progress=False, echo=lambda s: None)
    return data, run


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


# --- the cases ----------------------------------------------------------------------------------------------------


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

CASES = {
    # dataset reader (through training: nothing may be written before the data is known to be good)
    "data dir missing": Case([*TRAIN[:3], "{tmp}/nowhere", *TRAIN[4:]],
                             ["{tmp}/nowhere: dataset directory does not exist"], NEW),
    "manifest corrupt JSON": Case(TRAIN_COPY, ["{file}", "manifest is not valid JSON"], NEW,
                                  edit_manifest('{"format": "dsmpnn-dataset", "dim": ')),
    "manifest field missing": Case(TRAIN_COPY, ["{file}", "manifest has no key 'target_fields'"], NEW,
                                   edit_manifest(lambda m: m.pop("target_fields"))),
    "manifest wrong dimension": Case(TRAIN_COPY, ["{file}", "manifest 'dim' is 4, expected 2 or 3"], NEW,
                                     edit_manifest(lambda m: m.update(dim=4))),
    "sample field misnamed": Case(TRAIN_COPY, ["{file}", "missing array 'x'", "'inputs'"], NEW,
                                  break_sample(rename={"x": "inputs"})),
    "sample wrong shape": Case(TRAIN_COPY, ["{file}", "field 'y' has shape (63, 1)", "N=64"], NEW,
                               break_sample(y=lambda a: a["y"][:-1])),
    "sample wrong dimension": Case(TRAIN_COPY, ["{file}", "field 'pos' has shape (64, 3)", "expected [N, 2]"], NEW,
                                   break_sample(pos=lambda a: np.column_stack([a["pos"], np.arange(64.0)]))),
    "sample wrong field count": Case(TRAIN_COPY, ["{file}", "field 'x' has shape (64, 2)", "expected [N, 5]"], NEW,
                                     break_sample(x=lambda a: a["x"][:, :2])),
    "NaN input": Case(TRAIN_COPY, ["{file}", "field 'x' has 1 NaN/Inf values"], NEW,
                      break_sample(x=with_value("x", (3, 0), np.nan))),
    "Inf position": Case(TRAIN_COPY, ["{file}", "field 'pos' has 1 NaN/Inf values"], NEW,
                         break_sample(pos=with_value("pos", (0, 1), np.inf))),
    "Inf target in val split": Case(TRAIN_COPY, ["{file}", "field 'y' has 1 NaN/Inf values"], NEW, bad_val_sample),
    "empty mesh": Case(TRAIN_COPY, ["{file}", "the mesh is empty"], NEW,
                       break_sample(pos=np.zeros((0, 2)), x=np.zeros((0, 5)), y=np.zeros((0, 1)), cells=None,
                                    cell_type=None)),
    "duplicate nodes": Case(TRAIN_COPY, ["{file}", "field 'pos' has 2 duplicate node position(s)",
                                         "the first: nodes 4 and 9"], NEW, duplicate_nodes),
    "truncated NPZ": Case(TRAIN_COPY, ["{file}", "cannot read NPZ file, it may be truncated"], NEW, truncated_sample),
    # graph size and rank count
    "radius too large to train": Case([*TRAIN, "graph.radius=3", "graph.max_edges=1000"],
                                      ["graph.radius 3 gives about 2,256 edges (47 per node) on 48 sampled nodes", "graph.max_edges = 1,000",
                                       "training on Nyström samples"], NEW),
    "radius too large to evaluate": Case(["evaluate", "{tmp}/run"], ["graph.radius 0.3 gives about",
                                                                     "graph.max_edges = 100",
                                                                     "evaluation on the full mesh"],
                                         ["{tmp}/run"], edit_run_config("graph", "max_edges", 100)),
    "radius too large to predict": Case(["predict", "{tmp}/run", "--input", "{sample}", "--out", "{tmp}/p.npz"],
                                        ["graph.max_edges = 100", "prediction on the full mesh"],
                                        ["{tmp}/p.npz", "{tmp}/run"], edit_run_config("graph", "max_edges", 100)),
    "more ranks than nodes (evaluate)": Case(["evaluate", "{run}", "--nproc", "65"],
                                             ["has 64 nodes, fewer than the 65 ranks"], ["{run}"]),
    "more ranks than nodes (predict)": Case(["predict", "{run}", "--input", "{sample}", "--out", "{tmp}/p.npz",
                                             "--nproc", "65"], ["has 64 nodes, fewer than the 65 ranks"],
                                            ["{tmp}/p.npz"]),
    # configuration
    "config key unknown": Case([*TRAIN, "--config", "{tmp}/c.yaml"],
                               ["{tmp}/c.yaml", "unknown key(s) ['hiden'] in section 'model'"], NEW,
                               config_file("model:\n  hiden: 8\n")),
    "config value wrong type": Case([*TRAIN, "model.hidden=eight"], ["model.hidden is str 'eight', expected int"],
                                    NEW),
    "config list wrong type": Case([*TRAIN, "model.kernel_hidden=8"], ["model.kernel_hidden is int 8",
                                                                       "expected a list of int"], NEW),
    "config file missing": Case([*TRAIN, "--config", "{tmp}/nope.yaml"],
                                ["{tmp}/nope.yaml: config file does not exist"], NEW),
    "override without value": Case([*TRAIN, "train.epochs"], ["override 'train.epochs' must look like "
                                                               "section.key=value"], NEW),
    "override of unknown section": Case([*TRAIN, "trian.epochs=3"], ["unknown key(s) ['trian'] in the top level"],
                                        NEW),
    "timeout not positive": Case([*TRAIN, "distributed.timeout_s=0"], ["distributed.timeout_s must be > 0"], NEW),
    # paths
    "run dir missing": Case(["evaluate", "{tmp}/norun"], ["{tmp}/norun: run directory does not exist"],
                            ["{tmp}/norun"]),
    "not a run dir": Case(["evaluate", "{data}"], ["{data}: not a dsmpnn run directory (no config.yaml)"],
                          ["{data}"]),
    "input mesh missing": Case(["predict", "{run}", "--input", "{tmp}/mesh.vtu", "--out", "{tmp}/p.vtu"],
                               ["{tmp}/mesh.vtu: input file does not exist"], ["{tmp}/p.vtu"]),
    "input mesh with wrong fields": Case(["predict", "{run}", "--input", "{tmp}/mesh.npz", "--out", "{tmp}/p.npz"],
                                         ["{tmp}/mesh.npz: mesh has dim 2 and 3 input fields",
                                          "the model expects dim 2 and ['a', 'boundary'"], ["{tmp}/p.npz"],
                                         predict_input_wrong_fields),
    "predict output parent is a file": Case(["predict", "{run}", "--input", "{sample}", "--out", "{tmp}/file/p.npz"],
                                            ["{tmp}/file/p.npz: cannot create --out here",
                                             "{tmp}/file is a file, not a directory"], ["{tmp}/file"],
                                            parent_is_a_file),
    "train output parent is a file": Case([*TRAIN[:5], "{tmp}/file/run", *TRAIN[6:]],
                                          ["{tmp}/file/run: cannot create the run directory (--out) here",
                                           "{tmp}/file is a file"], ["{tmp}/file"], parent_is_a_file),
    "output parent is a file, before launching ranks": Case([*TRAIN[:5], "{tmp}/file/run", *TRAIN[6:], "--nproc", "2"],
                                                           ["{tmp}/file/run: cannot create the run directory (--out)"],
                                                           ["{tmp}/file"], parent_is_a_file),
    "generate output parent is a file": Case(["generate", "darcy", "--n", "2", "--resolution", "5", "--no-progress",
                                              "--out", "{tmp}/file/d"],
                                             ["{tmp}/file/d: cannot create the output directory here",
                                              "{tmp}/file is a file"], ["{tmp}/file"], parent_is_a_file),
    # run directories and checkpoints
    "run from an incompatible model": Case(["evaluate", "{tmp}/run"],
                                           ["the checkpoint's model does not fit the model of {file}",
                                            "size mismatch"], ["{tmp}/run"], edit_run_config("model", "hidden", 16)),
    "resume with an incompatible model": Case([*RESUME, "model.hidden=16"],
                                              ["the checkpoint's model does not fit the model of the configuration "
                                               "of this --resume", "size mismatch"], ["{tmp}/run"],
                                              lambda w: (w.copy_run(), {})[1]),
    "resume without run directory": Case([*RESUME[:6], "{tmp}/new", *RESUME[7:]],
                                         ["{tmp}/new: --resume needs a run directory with config.yaml"], NEW),
    "resume without checkpoint": Case(RESUME, ["{tmp}/run: --resume given but there is no checkpoint"],
                                      ["{tmp}/run"], drop_checkpoints),
    "every checkpoint corrupt": Case(["evaluate", "{tmp}/run"], ["{tmp}/run/checkpoints: every checkpoint is "
                                                                 "unreadable", "ckpt_epoch_000001.pt"],
                                     ["{tmp}/run"], corrupt_checkpoints),
    "checkpoint of another major version": Case(["evaluate", "{tmp}/run"],
                                                ["ckpt_epoch_000001.pt: written by dsmpnn 9.0.0, this is dsmpnn "],
                                                ["{tmp}/run"], future_checkpoint),
    "run metadata corrupt": Case(["evaluate", "{tmp}/run"], ["{tmp}/run/dataset.json: not valid JSON"],
                                 ["{tmp}/run"], corrupt_run_meta),
    "split unknown": Case(["evaluate", "{run}", "--split", "holdout"], ["no split 'holdout'"], ["{run}"]),
    # importers
    "grid NaN": Case(["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o", "--no-progress"],
                     ["{tmp}/g.npz: key 'y' has 1 NaN/Inf values in sample 1"], ["{tmp}/o"],
                     grid_file(x=np.ones((3, 4, 5)), y=grid_with_nan)),
    "grid wrong dimension": Case(["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o"],
                                 ["{tmp}/g.npz: key 'x' has shape (4, 5) (2 dimensions)"], ["{tmp}/o"],
                                 grid_file(x=np.ones((4, 5)), y=np.ones((3, 4, 5)))),
    "grid truncated NPZ": Case(["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o"],
                               ["{tmp}/g.npz: cannot read the .npz file"], ["{tmp}/o"], truncated_grid),
    "airfrans manifest missing": Case(["import", "airfrans", "{tmp}/airfrans", "--out", "{tmp}/o"],
                                      ["{tmp}/airfrans/manifest.json: no AirfRANS manifest.json"], ["{tmp}/o"],
                                      airfrans(None)),
    "airfrans manifest corrupt": Case(["import", "airfrans", "{tmp}/airfrans", "--out", "{tmp}/o"],
                                      ["{tmp}/airfrans/manifest.json: not valid JSON"], ["{tmp}/o"],
                                      airfrans('{"full_train": [')),
    "airfrans field missing": Case(["import", "airfrans", "{tmp}/airfrans", "--out", "{tmp}/o", "--no-progress"],
                                   ["{case}_internal.vtu: no point data 'nut'"], ["{tmp}/o"],
                                   airfrans(None, drop="nut")),
}


def snapshot(path: Path) -> dict[str, str] | None:
    """Content hashes of a file or of every file under a directory; None when absent."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(name, shared, tmp_path, capsys):
    case = CASES[name]
    world = World(*shared, tmp_path)
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


def test_radius_that_isolates_nodes_warns_once_per_command(shared, tmp_path, capsys):
    """A radius below the node spacing (1/7): one warning with counts for training (not one per step or epoch),
    one for evaluation."""
    data, _ = shared
    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--data", str(data), "--out", str(run), *TINY, "graph.radius=0.1",
                 "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert warnings == ["dsmpnn train: warning: graph.radius 0.1: 192 of 192 nodes (100.0 %) of the 4 sampled graphs "
                        "of epoch 1 have no neighbour within the radius and receive no message; consider a larger "
                        "graph.radius or graph.sample_nodes"], err
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "64 of 64 nodes (100.0 %) of the 1 meshes of split 'test'" in warnings[0]
