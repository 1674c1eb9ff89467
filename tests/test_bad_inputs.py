"""Bad input through the command line: every case exits 2 with one line naming the file or field and what was
expected, no traceback, and leaves no partial output.

The cases cover the dataset reader, the importers (grid, AirfRANS), configs, run directories and checkpoints,
graph sizes, rank counts and output paths. Each one builds its broken input from a small Darcy set and a run
trained on it for one epoch (shared by the module), then runs ``dsmpnn.cli.main``.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsmpnn.cli import main
from tests.helpers.cli_cases import (NEW, RESUME, TINY, TRAIN, TRAIN_COPY, Case, World, airfrans, bad_val_sample,
                                     break_sample, config_file, corrupt_checkpoints, corrupt_run_meta, drop_checkpoints,
                                     duplicate_nodes, edit_manifest, edit_run_config, future_checkpoint, grid_file,
                                     grid_with_nan, parent_is_a_file, predict_input_wrong_fields, run_case,
                                     truncated_grid, truncated_sample, with_value)

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
    "position far outside the mesh": Case(TRAIN_COPY, ["{file}", "field 'pos' has a coordinate of 1e+308 (node 7)",
                                                        "expected coordinates within ±1e+15"], NEW,
                                          break_sample(pos=with_value("pos", (7, 0), 1e308))),
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
    "timeout not positive": Case([*TRAIN, "distributed.timeout_s=0"], ["distributed.timeout_s is 0.0, expected a number > 0"], NEW),
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
                                              ["--resume changes model.hidden from 8 (the run's config.yaml) to 16",
                                               "changes what the checkpoints mean"], ["{tmp}/run"],
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
    "run metadata corrupt": Case(["evaluate", "{tmp}/run"], ["{tmp}/run/dataset.json: run file",
                                                             "is not valid JSON at line 1:10"],
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
                                      ["{tmp}/airfrans/manifest.json: AirfRANS manifest is not valid JSON at "
                                       "line 1:17"], ["{tmp}/o"],
                                      airfrans('{"full_train": [')),
    "airfrans field missing": Case(["import", "airfrans", "{tmp}/airfrans", "--out", "{tmp}/o", "--no-progress"],
                                   ["{case}_internal.vtu: no point data 'nut'"], ["{tmp}/o"],
                                   airfrans(None, drop="nut")),
}




@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(name, shared, tmp_path, capsys):
    run_case(CASES[name], World(*shared, tmp_path), capsys)


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
