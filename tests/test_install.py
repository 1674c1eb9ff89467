"""A plain install (no extras) works: PyTorch Geometric is imported only by the GCN and bench conv's NNConv, and
the wheel carries the C++ source of the fused kernels. (.ci/smoke.sh installs the package into a fresh virtual
environment and runs the commands from it.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_PYG = "import sys; sys.modules['torch_geometric'] = None\n"  # any import of torch_geometric now fails


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_core_modules_do_not_import_torch_geometric():
    code = ("import sys\nimport dsmpnn, dsmpnn.nn, dsmpnn.train, dsmpnn.cli, dsmpnn.bench, dsmpnn.train.factory\n"
            "from dsmpnn.nn import GCN\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch_geometric'))")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    blocked = run_python(NO_PYG + code.replace("import sys\n", ""))
    assert blocked.returncode == 0, blocked.stderr


def test_gcn_without_torch_geometric_is_one_line_naming_the_extra():
    code = NO_PYG + """
from dsmpnn.errors import MissingDependency
from dsmpnn.nn import GCN
try:
    GCN(3, 1)
except MissingDependency as e:
    assert isinstance(e, ImportError) and e.exit_code == 1
    print(e)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("model.kind 'gcn' (PyG's GCNConv) needs torch_geometric, which is not installed: "
                                   "install it with `pip install 'dsmpnn[gcn]'`")


def test_train_gcn_without_torch_geometric_exits_1_and_writes_nothing(shared, tmp_path):
    data, _ = shared
    out = tmp_path / "gcn"
    args = ["train", "--no-progress", "--data", str(data), "--out", str(out), "model.kind=gcn", "train.epochs=1"]
    done = run_python(NO_PYG + f"from dsmpnn.cli import main\nsys.exit(main({args!r}))")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "dsmpnn train: error: model.kind 'gcn' (PyG's GCNConv) needs torch_geometric, which is not installed: "
        "install it with `pip install 'dsmpnn[gcn]'`"]
    assert not out.exists()


def test_bench_conv_without_torch_geometric(tmp_path):
    small = ["bench", "conv", "--nodes", "60", "--radius", "0.3", "--channels", "4", "--hidden", "4", "--repeats",
             "1", "--dense-size", "8"]
    done = run_python(NO_PYG + f"from dsmpnn.cli import main\nsys.exit(main({small!r}))")
    assert done.returncode == 1
    assert done.stderr.strip() == ("dsmpnn bench: error: the NNConv comparison of bench conv needs torch_geometric, "
                                   "which is not installed: install it with `pip install 'dsmpnn[gcn]'` (or pass "
                                   "--no-nnconv / nnconv=False)")
    done = run_python(NO_PYG + f"from dsmpnn.cli import main\nsys.exit(main({[*small, '--no-nnconv']!r}))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("N=60 ") and "ECConv" in done.stdout, done.stdout


@pytest.mark.slow
def test_wheel_carries_the_kernel_source_and_no_tests(tmp_path):
    """The wheel `pip install .` builds holds the package, its C++ kernel source and the entry point. Built from a
    copy of the files a build reads (setuptools' build/ directory in the source tree would keep stale files)."""
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(tree)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("dsmpnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dsmpnn/nn/kernels/ecconv_kernels.cpp" in names
    assert "dsmpnn/cli.py" in names and "dsmpnn/optional.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dsmpnn = dsmpnn.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: gcn" in metadata
    assert "Requires-Dist: torch_geometric>=2.4; extra == \"gcn\"" in metadata
