"""Start-up stays light: what the CLI imports before it knows the command, and what the launcher of --nproc ranks
imports before it starts the ranks' fork server (see benchmarks/bench_startup.py for the times; not timed here).

Each case runs in a fresh interpreter (this one has imported everything already)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy", "matplotlib", "meshio", "tensorboard", "torch.utils.tensorboard", "torch_geometric",
         "h5py", "tqdm")


def imported_after(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"import sys, json\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [
    ["predict", "RUN", "--input", "m.npz", "--out", "o.npz", "--nproc", "2"],
    ["train", "--data", "D", "--out", "R", "--nproc", "2", "train.epochs=1"],
    ["evaluate", "RUN", "--nproc", "2"],
    ["partition", "--data", "D", "--nproc", "2"],
    ["generate", "darcy", "--out", "D"],
])
def test_parsing_a_command_line_imports_nothing_heavy(argv):
    assert imported_after(f"import dsmpnn.cli as c\nc.build_parser().parse_args({argv!r})") == []


def test_the_rank_launcher_starts_before_torch_is_imported():
    """RankLauncher starts the ranks' fork server (which imports torch) before the launcher imports it itself."""
    assert imported_after("from dsmpnn.distributed.launch import RankLauncher, launch_module") == []


def test_packages_import_their_parts_on_first_use():
    code = ("import dsmpnn, dsmpnn.data, dsmpnn.graph, dsmpnn.distributed, dsmpnn.train\n"
            "from dsmpnn.graph import PARTITION_METHODS\nfrom dsmpnn.data import MeshSample")
    assert imported_after(code) == []


def test_prediction_and_training_code_import_no_plotting_or_logging_library():
    """matplotlib is imported when a figure is drawn, tensorboard when rank 0 opens its log, meshio for mesh
    files: predict on an .npz and the ranks that draw nothing do not pay for them."""
    found = imported_after("import dsmpnn.train.evaluate, dsmpnn.train.trainer")
    assert "torch" in found and not {"matplotlib", "tensorboard", "torch.utils.tensorboard", "meshio"} & set(found)


def test_a_lazy_name_that_is_also_a_submodule_stays_the_function():
    """`import dsmpnn.graph.partition` binds the submodule to the package; the exported function keeps the name,
    as with eager imports."""
    code = ("import dsmpnn.graph.partition\nimport dsmpnn.graph as g\nassert callable(g.partition), g.partition")
    imported_after(code)


@pytest.mark.parametrize("package", ["dsmpnn.data", "dsmpnn.graph", "dsmpnn.distributed", "dsmpnn.train"])
def test_lazy_packages_export_what_they_list(package):
    """Each lazy package's ``__all__`` is its ``_LAZY`` table, and every name resolves to its submodule's object."""
    import importlib

    mod = importlib.import_module(package)
    assert sorted(mod.__all__) == sorted(mod._LAZY)
    for name, sub in mod._LAZY.items():
        assert getattr(mod, name) is getattr(importlib.import_module(f"{package}.{sub}"), name), name
