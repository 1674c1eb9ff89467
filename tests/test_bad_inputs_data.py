"""Files from users are untrusted: dataset entries stay inside the dataset directory and are regular files, array
sizes are checked before allocation, JSON is read strictly, third-party readers fail with our one-line message, and
``predict``/``evaluate`` never lose or clash what they write.

Every case runs ``dsmpnn.cli.main`` (see :func:`tests.helpers.cli_cases.run_case`: exit 2, one line naming the file
and what was expected, no traceback, no partial output) under an alarm, so that a regression that blocks on a FIFO
fails the case instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import meshio
import numpy as np
import pytest
from numpy.lib import format as npy_format

from dsmpnn.cli import main
from dsmpnn.data import Dataset
from tests.helpers.cli_cases import (NEW, TRAIN_COPY, Case, World, airfrans, alarm, break_sample, edit_manifest,
                                     first_train_file, run_case)

CASE_SECONDS = 120




# --- how the cases break things -----------------------------------------------------------------------------------


def set_train_entry(entry: Callable[[World, Path], str]) -> Callable[[World], dict]:
    """Replace the first train entry of a copied dataset's manifest with ``entry(world, data)``."""
    def setup(w: World) -> dict:
        data = w.copy_data()
        path = data / "manifest.json"
        obj = json.loads(path.read_text())
        obj["splits"]["train"][0] = entry(w, data)
        path.write_text(json.dumps(obj))
        return {"file": str(path), "entry": obj["splits"]["train"][0]}
    return setup


def outside_sample(w: World, data: Path) -> Path:
    """A good sample file outside the dataset directory."""
    target = w.tmp / "outside.npz"
    target.write_bytes(first_train_file(data).read_bytes())
    return target


def symlink_out(w: World, data: Path) -> str:
    (data / "samples" / "link.npz").symlink_to(outside_sample(w, data))
    return "samples/link.npz"


def fifo_entry(w: World, data: Path) -> str:
    os.mkfifo(data / "samples" / "pipe.npz")
    return "samples/pipe.npz"


def manifest_bytes(raw: bytes) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        path = w.copy_data() / "manifest.json"
        path.write_bytes(raw)
        return {"file": str(path)}
    return setup


def fifo_manifest(w: World) -> dict:
    path = w.copy_data() / "manifest.json"
    path.unlink()
    os.mkfifo(path)
    return {}


def forged_header(shape: tuple[int, ...], key: str = "pos") -> Callable[[World], dict]:
    """The first train sample with the ``.npy`` header of ``key`` claiming ``shape`` (the data stays small)."""
    def setup(w: World) -> dict:
        path = first_train_file(w.copy_data())
        forge_npz_header(path, key, shape)
        return {"file": str(path)}
    return setup


def forge_npz_header(path: Path, key: str, shape: tuple[int, ...]) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    out = path.with_suffix(".tmp")
    with zipfile.ZipFile(out, "w") as z:
        for name, raw in members.items():
            if name == f"{key}.npy":
                with z.open(name, "w") as f:
                    npy_format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
                    f.write(b"\0" * 64)
            else:
                z.writestr(name, raw)
    out.replace(path)


def copy_sample(w: World) -> dict:
    """The test sample copied to {tmp}/s.npz, with a symlink {tmp}/link.npz to it."""
    (w.tmp / "s.npz").write_bytes(w.sample.read_bytes())
    (w.tmp / "link.npz").symlink_to(w.tmp / "s.npz")
    return {}


def run_with_names(target: str = "u", first_input: str = "a") -> Callable[[World], dict]:
    """A copy of the run whose (single) target field and first input field are renamed."""
    def setup(w: World) -> dict:
        run = w.copy_run()
        meta = json.loads((run / "dataset.json").read_text())
        meta["manifest"]["target_fields"][0]["name"] = target
        meta["manifest"]["input_fields"][0]["name"] = first_input
        (run / "dataset.json").write_text(json.dumps(meta))
        return {}
    return setup


def darcy_vtu(w: World, path: Path, change: Callable[[dict], None] | None = None,
              blocks: list[tuple[str, np.ndarray]] | None = None) -> Path:
    """The test sample as a VTU with its inputs (and target) as point data; ``change`` edits the point data."""
    ds = Dataset(w.data)
    s = ds.load(ds.split("test")[0])
    names = [f.name for f in ds.manifest.input_fields]
    data = {n: s.x[:, k] for k, n in enumerate(names)}
    data["u"] = s.y[:, 0]
    if change is not None:
        change(data)
    pts = np.column_stack([s.pos, np.zeros(s.num_nodes)])
    meshio.write(path, meshio.Mesh(pts, blocks if blocks is not None else [(s.cell_type, s.cells)], point_data=data))
    return path


def vector_input(w: World) -> dict:
    darcy_vtu(w, w.tmp / "m.vtu", lambda d: d.update(a=np.column_stack([d["a"], d["a"], d["a"]])))
    return {}


def cells_out_of_range(w: World) -> dict:
    darcy_vtu(w, w.tmp / "m.vtu", blocks=[("triangle", np.array([[0, 1, 9999]]))])
    return {}


def garbage(path: str) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        (w.tmp / path).write_bytes(b"<VTKFile type='UnstructuredGrid'> this is not a mesh \xff\xfe")
        return {}
    return setup


def fifo(path: str) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        os.mkfifo(w.tmp / path)
        return {}
    return setup


def read_only_run(w: World) -> dict:
    run = w.copy_run()
    run.chmod(0o555)
    return {}


def metrics_is_a_directory(w: World) -> dict:
    (w.copy_run() / "metrics.json").mkdir()
    return {}


def airfrans_lists(**lists) -> Callable[[World], dict]:
    """An AirfRANS folder with the good case and a manifest of ``lists`` ('{case}' stands for its name)."""
    def setup(w: World) -> dict:
        from tests.data.test_airfrans import CASE, write_case

        src = w.tmp / "airfrans"
        write_case(src)
        text = json.dumps(lists).replace("{case}", CASE)
        (src / "manifest.json").write_text(text)
        return {"case": CASE}
    return setup


def airfrans_case(change: Callable[[Path, str], None]) -> Callable[[World], dict]:
    """An AirfRANS folder with one good case in full_train, then ``change(folder, case)``."""
    def setup(w: World) -> dict:
        subs = airfrans_lists(full_train=["{case}"], full_test=[])(w)
        change(w.tmp / "airfrans", subs["case"])
        return subs
    return setup


def garbage_vtu(src: Path, case: str) -> None:
    (src / case / f"{case}_internal.vtu").write_bytes(b"<?xml version='1.0'?><VTKFile>\x00\x01 garbage")


def fifo_vtp(src: Path, case: str) -> None:
    vtp = src / case / f"{case}_aerofoil.vtp"
    vtp.unlink()
    os.mkfifo(vtp)


def case_symlinked_out(src: Path, case: str) -> None:
    (src / case).rename(src.parent / case)
    (src / case).symlink_to(src.parent / case)


def airfrans_manifest_bytes(raw: bytes) -> Callable[[World], dict]:
    def setup(w: World) -> dict:
        airfrans(None)(w)
        (w.tmp / "airfrans" / "manifest.json").write_bytes(raw)
        return {}
    return setup


def grid_bomb(w: World) -> dict:
    np.savez(w.tmp / "g.npz", x=np.ones((3, 4, 5)), y=np.ones((3, 4, 5)))
    forge_npz_header(w.tmp / "g.npz", "x", (10**12, 4, 5))
    return {}


PREDICT = ["predict", "{run}", "--input", "{tmp}/m.vtu", "--out", "{tmp}/p.vtu"]
IMPORT_AIRFRANS = ["import", "airfrans", "{tmp}/airfrans", "--out", "{tmp}/o", "--no-progress"]
AIRFRANS_MANIFEST = "{tmp}/airfrans/manifest.json"

CASES = {
    # split entries: inside the dataset directory, regular files
    "entry absolute path": Case(TRAIN_COPY, ["{file}: split entry '{tmp}/outside.npz' is an absolute path",
                                             "expected a path relative to {tmp}/data"], NEW,
                                set_train_entry(lambda w, d: str(outside_sample(w, d)))),
    "entry ../ path": Case(TRAIN_COPY, ["{file}: split entry '../outside.npz' resolves to", "outside",
                                        "expected a file inside that directory"], NEW,
                           set_train_entry(lambda w, d: (outside_sample(w, d), "../outside.npz")[1])),
    "entry symlink out": Case(TRAIN_COPY, ["{file}: split entry 'samples/link.npz' resolves to", "outside.npz"],
                              NEW, set_train_entry(symlink_out)),
    "entry /dev/zero": Case(TRAIN_COPY, ["{file}: split entry '/dev/zero' is an absolute path"], NEW,
                            set_train_entry(lambda w, d: "/dev/zero")),
    "entry FIFO": Case(TRAIN_COPY, ["samples/pipe.npz: sample file is a FIFO (named pipe), expected a regular file",
                                    "split entry 'samples/pipe.npz' of {file}"], NEW, set_train_entry(fifo_entry)),
    "entry directory": Case(TRAIN_COPY, ["samples: sample file is a directory, expected a regular file"], NEW,
                            set_train_entry(lambda w, d: "samples")),
    # sizes before allocation
    "NPZ header claims 1e12 rows": Case(TRAIN_COPY, ["{file}: array 'pos' claims shape (1000000000000, 2) of float64",
                                                     "16,000,000,000,000 bytes", "holds 64 bytes of data"], NEW,
                                        forged_header((10**12, 2))),
    "NPZ object array": Case(TRAIN_COPY, ["{file}: array 'cells' holds Python objects", "never unpickles"], NEW,
                             break_sample(cells=np.array([[0, 1, 2], [3, 4]], dtype=object))),
    "grid NPZ header bomb": Case(["import", "grid", "{tmp}/g.npz", "--out", "{tmp}/o"],
                                 ["{tmp}/g.npz: array 'x' claims shape (1000000000000, 4, 5)"], ["{tmp}/o"],
                                 grid_bomb),
    # JSON and UTF-8
    "manifest invalid UTF-8": Case(TRAIN_COPY, ["{file}: manifest is not valid UTF-8 text (byte 0xff at byte offset "
                                                "12)"], NEW, manifest_bytes(b'{"format": "\xff"}')),
    "manifest deep JSON": Case(TRAIN_COPY, ["{file}: manifest nests JSON arrays/objects too deeply"], NEW,
                               manifest_bytes(b"[" * 100_000)),
    "manifest JSON error at line:col": Case(TRAIN_COPY, ["{file}: manifest is not valid JSON at line 2:7"], NEW,
                                            manifest_bytes(b'{"format":\n "x", ]')),
    "manifest is a FIFO": Case(TRAIN_COPY, ["{tmp}/data/manifest.json: manifest is a FIFO (named pipe), expected a "
                                            "regular file"], NEW, fifo_manifest),
    "manifest duplicate key": Case(TRAIN_COPY, ["{file}: manifest has the key 'dim' twice"], NEW,
                                   manifest_bytes(b'{"dim": 2, "dim": 3}')),
    "manifest duplicate field name": Case(TRAIN_COPY, ["{file}: manifest field name(s) ['a'] appear more than once"],
                                          NEW, edit_manifest(lambda m: m["target_fields"][0].update(name="a"))),
    # cells
    "cells out of range": Case(TRAIN_COPY, ["{file}", "field 'cells' has 189 node indices outside [0, 64)"], NEW,
                               break_sample(cells=lambda a: a["cells"] + 60)),
    "cell type unknown": Case(TRAIN_COPY, ["{file}", "'cell_type' is 'banana', expected one of vertex, line"], NEW,
                              break_sample(cell_type=np.array("banana"))),
    "cells wrong width": Case(TRAIN_COPY, ["{file}", "field 'cells' has shape (49, 3)", "expected an integer array "
                                           "[M, 4] (quad)"], NEW, break_sample(cells=lambda a: a["cells"][:, :3])),
    "cells not integers": Case(TRAIN_COPY, ["{file}", "field 'cells' has shape (49, 4) and dtype float64"], NEW,
                               break_sample(cells=lambda a: a["cells"] + 0.5)),
    "cell type not a string": Case(TRAIN_COPY, ["{file}: array 'cell_type' has shape (2,)"], NEW,
                                   break_sample(cell_type=np.array([1, 2]))),
    # predict: third-party readers, what it reads and writes
    "predict garbage .vtu": Case(PREDICT, ["{tmp}/m.vtu: cannot read the input mesh", "Couldn't read file"],
                                 ["{tmp}/p.vtu"], garbage("m.vtu")),
    "predict FIFO input": Case(["predict", "{run}", "--input", "{tmp}/m.npz", "--out", "{tmp}/p.npz"],
                               ["{tmp}/m.npz: input file is a FIFO (named pipe), expected a regular file"],
                               ["{tmp}/p.npz"], fifo("m.npz")),
    "predict vector where scalar expected": Case(PREDICT, ["{tmp}/m.vtu: point data 'a' has shape (64, 3), "
                                                           "expected [64] or [64, 1]"], ["{tmp}/p.vtu"],
                                                 vector_input),
    "predict VTU cells out of range": Case(PREDICT, ["{tmp}/m.vtu: cell block 0 ('triangle')", "outside [0, 64)"],
                                           ["{tmp}/p.vtu"], cells_out_of_range),
    "predict NPZ header bomb": Case(["predict", "{run}", "--input", "{file}", "--out", "{tmp}/p.npz"],
                                    ["{file}: array 'pos' claims shape (1000000000000, 2)"], ["{tmp}/p.npz"],
                                    forged_header((10**12, 2))),
    "predict --out is --input": Case(["predict", "{run}", "--input", "{tmp}/s.npz", "--out", "{tmp}/s.npz"],
                                     ["{tmp}/s.npz: --out is the --input file"], ["{tmp}/s.npz"], copy_sample),
    "predict --out is a link to --input": Case(["predict", "{run}", "--input", "{tmp}/s.npz", "--out",
                                                "{tmp}/link.npz"], ["--out is the --input file"], ["{tmp}/s.npz"],
                                               copy_sample),
    "predict --out is --input, before launching ranks": Case(["predict", "{run}", "--input", "{tmp}/s.npz", "--out",
                                                              "{tmp}/s.npz", "--nproc", "2"],
                                                             ["--out is the --input file"], ["{tmp}/s.npz"],
                                                             copy_sample),
    "predict target named pos": Case(["predict", "{tmp}/run", "--input", "{sample}", "--out", "{tmp}/p.npz"],
                                     ["{tmp}/p.npz: the output would hold the key 'pos' twice, for the node "
                                      "positions and for the prediction of target field 'pos'",
                                      "write a .vtu file instead"], ["{tmp}/p.npz"], run_with_names(target="pos")),
    "predict input named like an error field": Case(["predict", "{tmp}/run", "--input", "{sample}", "--out",
                                                     "{tmp}/p.vtu"], ["the output would hold the key 'u_error' twice",
                                                                      "for the error of 'u' and for input field "
                                                                      "'u_error'", "write a .npz file instead"],
                                                    ["{tmp}/p.vtu"], run_with_names(first_input="u_error")),
    # evaluate writes where it can, decided before computing
    "evaluate metrics.json is a directory": Case(["evaluate", "{tmp}/run", "--no-plots"],
                                                 ["{tmp}/run/metrics.json: metrics.json (written by evaluate) is a "
                                                  "directory"], ["{tmp}/run"], metrics_is_a_directory),
    # AirfRANS
    "airfrans garbage .vtu": Case(IMPORT_AIRFRANS, ["{case}_internal.vtu: cannot read the VTU file"], ["{tmp}/o"],
                                  airfrans_case(garbage_vtu)),
    "airfrans FIFO .vtp": Case(IMPORT_AIRFRANS, ["{case}_aerofoil.vtp: case file is a FIFO (named pipe)"],
                               ["{tmp}/o"], airfrans_case(fifo_vtp)),
    "airfrans case ../x": Case(IMPORT_AIRFRANS, [AIRFRANS_MANIFEST + ": case '../x' in 'full_train' is not a folder "
                                                 "name"], ["{tmp}/o"],
                               airfrans_lists(full_train=["{case}", "../x"], full_test=[])),
    "airfrans case symlinked out": Case(IMPORT_AIRFRANS, [AIRFRANS_MANIFEST + ": case '{case}' resolves to",
                                                          "outside"], ["{tmp}/o"], airfrans_case(case_symlinked_out)),
    "airfrans case in two splits": Case(IMPORT_AIRFRANS, [AIRFRANS_MANIFEST + ": case '{case}' is listed in both "
                                                          "'full_train' and 'full_test'"], ["{tmp}/o"],
                                        airfrans_lists(full_train=["{case}"], full_test=["{case}"])),
    "airfrans case twice in a split": Case(IMPORT_AIRFRANS, ["case '{case}' is listed twice in 'full_train'"],
                                           ["{tmp}/o"], airfrans_lists(full_train=["{case}", "{case}"],
                                                                       full_test=[])),
    "airfrans manifest invalid UTF-8": Case(IMPORT_AIRFRANS, [AIRFRANS_MANIFEST + ": AirfRANS manifest is not valid "
                                                              "UTF-8 text (byte 0xc3 at byte offset 2)"], ["{tmp}/o"],
                                            airfrans_manifest_bytes(b'["\xc3(" ]')),
    "airfrans manifest deep JSON": Case(IMPORT_AIRFRANS, [AIRFRANS_MANIFEST + ": AirfRANS manifest nests JSON"],
                                        ["{tmp}/o"], airfrans_manifest_bytes(b'{"a":' * 50_000)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_untrusted_file_exits_2_with_one_clear_line_and_writes_nothing(name, shared, tmp_path, capsys):
    with alarm(CASE_SECONDS):
        run_case(CASES[name], World(*shared, tmp_path), capsys)


def test_evaluate_refuses_a_read_only_run_before_computing(shared, tmp_path, capsys, monkeypatch):
    """A run directory evaluate cannot write to: refused before the model is loaded (root may write anywhere, so
    os.access is made to answer as for another user)."""
    import dsmpnn.train.evaluate as evaluate

    def no_model(*args, **kwargs):
        raise AssertionError("the run was loaded before its directory was found read-only")

    monkeypatch.setattr(evaluate, "_open_run", no_model)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and not (
            mode & os.W_OK and Path(p) == tmp_path / "run"))
    case = Case(["evaluate", "{tmp}/run"], ["{tmp}/run/metrics.json: cannot create metrics.json (written by "
                                            "evaluate) here, because {tmp}/run is not writable"], ["{tmp}/run"],
                read_only_run)
    try:
        run_case(case, World(*shared, tmp_path), capsys)
    finally:
        (tmp_path / "run").chmod(0o755)


# --- what works --------------------------------------------------------------------------------------------------


def test_predict_keeps_every_cell_block_of_a_vtu(shared, tmp_path, capsys):
    """A mesh of triangles and quads: the predicted .vtu has both blocks, cell for cell."""
    w = World(*shared, tmp_path)
    ds = Dataset(w.data)
    quads = ds.load(ds.split("test")[0]).cells
    tris = np.concatenate([quads[:20, [0, 1, 2]], quads[:20, [0, 2, 3]]])
    blocks = [("triangle", tris), ("quad", quads[20:])]
    darcy_vtu(w, tmp_path / "m.vtu", blocks=blocks)
    assert main(["predict", str(w.run), "--input", str(tmp_path / "m.vtu"), "--out", str(tmp_path / "p.vtu")]) == 0
    out = meshio.read(tmp_path / "p.vtu")
    assert [(b.type, b.data.tolist()) for b in out.cells] == [(t, c.tolist()) for t, c in blocks]
    assert {"u", "u_true", "u_error", "a", "boundary"} <= set(out.point_data)


@pytest.mark.parametrize("name", ["file", "allow_pickle", "pred_x"])
def test_predict_writes_any_target_name_that_does_not_clash(name, shared, tmp_path):
    """Target names that are parameters of numpy.savez are plain keys of the .npz."""
    w = World(*shared, tmp_path)
    run_with_names(target=name)(w)
    out = tmp_path / "p.npz"
    assert main(["predict", str(tmp_path / "run"), "--input", str(w.sample), "--out", str(out)]) == 0
    with np.load(out) as z:
        assert set(z.files) == {"pos", "pred", name, f"{name}_true", f"{name}_error"}
        np.testing.assert_array_equal(z[name], z["pred"][:, 0])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_generated_dataset_directory_follows_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        assert main(["generate", "darcy", "--n", "2", "--resolution", "5", "--no-progress", "--out",
                     str(tmp_path / "d")]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "d", tmp_path / "d" / "samples"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
    assert stat.S_IMODE((tmp_path / "d" / "manifest.json").stat().st_mode) == 0o666 & ~umask
