#!/usr/bin/env bash
# Smoke test of a plain, non-editable install, as a user gets it:
#   1. a fresh virtual environment; torch pinned first (TORCH_SPEC, a CPU wheel here), as the README says;
#   2. `python -m build`: the sdist, then the wheel built FROM the sdist (so the sdist holds what the wheel needs);
#      the wheel must carry the C++ source of the fused kernels;
#   3. `pip install` of that wheel with no extras (no torch_geometric, no test tools);
#   4. from a directory outside the source tree (src/ cannot be imported by accident): generate, train, evaluate,
#      predict with the installed `dsmpnn`, and the Python API (the same prediction as predict); the fused CPU
#      kernels must compile from the installed package (no "fused CPU kernels unavailable" warning, a library in
#      the fresh cache).
# Usage: .ci/smoke.sh            (make smoke; .ci/run calls it after the tests)
#   SMOKE_DIR=DIR  work there (default: a new /tmp/dsmpnn-smoke.XXXXXX, removed on success)
#   PYTHON=python3.12  TORCH_SPEC=  (empty: no torch pin; VENV_FLAGS=--system-site-packages to use one you have)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC-torch==2.13.0}"
VENV_FLAGS="${VENV_FLAGS:-}"
SMOKE="${SMOKE_DIR:-$(mktemp -d /tmp/dsmpnn-smoke.XXXXXX)}"
mkdir -p "$SMOKE"
SMOKE="$(cd "$SMOKE" && pwd)"
start=$SECONDS
step() { echo "smoke [$((SECONDS - start))s]: $*"; }
fail() { echo "smoke: FAILED: $*" >&2; echo "smoke: files kept in $SMOKE" >&2; exit 1; }

step "fresh virtual environment in $SMOKE/venv"
rm -rf "$SMOKE/venv" "$SMOKE/dist" "$SMOKE/work" "$SMOKE/cache"
# shellcheck disable=SC2086
"$PYTHON" -m venv $VENV_FLAGS "$SMOKE/venv"
PY="$SMOKE/venv/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if [ -n "$TORCH_SPEC" ]; then
    step "pip install $TORCH_SPEC"
    "${PIP[@]}" "$TORCH_SPEC"
fi
"${PIP[@]}" build

step "python -m build (sdist, then the wheel from the sdist)"
"$PY" -m build --outdir "$SMOKE/dist" "$REPO" > "$SMOKE/build.log" 2>&1 || { tail -20 "$SMOKE/build.log"; fail "python -m build"; }
"$PY" - "$SMOKE/dist" <<'PYEOF' || fail "sdist/wheel contents"
import sys, tarfile, zipfile
from pathlib import Path
dist = Path(sys.argv[1])
(sdist,), (wheel,) = sorted(dist.glob("dsmpnn-*.tar.gz")), sorted(dist.glob("dsmpnn-*.whl"))
in_sdist = [n.split("/", 1)[-1] for n in tarfile.open(sdist).getnames()]
in_wheel = zipfile.ZipFile(wheel).namelist()
for need in ("src/dsmpnn/nn/kernels/ecconv_kernels.cpp", "pyproject.toml", "README.md", "tests/conftest.py"):
    assert need in in_sdist, f"{sdist.name} lacks {need}"
assert "dsmpnn/nn/kernels/ecconv_kernels.cpp" in in_wheel, f"{wheel.name} lacks dsmpnn/nn/kernels/ecconv_kernels.cpp"
assert not any(n.startswith("tests/") for n in in_wheel), f"{wheel.name} holds tests"
print(f"smoke: {sdist.name} ({len(in_sdist)} entries) and {wheel.name} ({len(in_wheel)} files) hold the kernel source")
PYEOF

step "pip install $(basename "$SMOKE"/dist/dsmpnn-*.whl) (no extras)"
"${PIP[@]}" "$SMOKE"/dist/dsmpnn-*.whl
mkdir -p "$SMOKE/work"
cd "$SMOKE/work"  # outside the source tree
export DSMPNN_CACHE_DIR="$SMOKE/cache"  # a fresh cache: the kernels are compiled from the installed .cpp
unset PYTHONPATH
"$PY" -c "
import importlib.util, sys, dsmpnn
assert '$REPO' not in dsmpnn.__file__, dsmpnn.__file__
assert importlib.util.find_spec('torch_geometric') is None, 'torch_geometric is installed: not a plain install'
print('smoke: dsmpnn', dsmpnn.__version__, 'from', dsmpnn.__file__)" || fail "the installed package"
DSMPNN="$SMOKE/venv/bin/dsmpnn"
TINY=(model.hidden=8 model.layers=2 "model.kernel_hidden=[8]" "model.encoder_hidden=[8]" "model.decoder_hidden=[8]"
      graph.radius=0.3 graph.sample_nodes=48 train.batch_graphs=2 eval.plot_samples=0 train.epochs=1)

step "dsmpnn generate darcy"
"$DSMPNN" generate darcy --n 8 --resolution 8 --seed 0 --out data > generate.log 2>&1 || { cat generate.log; fail "generate"; }
step "dsmpnn train"
"$DSMPNN" train --no-progress --data data --out run "${TINY[@]}" > train.log 2>&1 || { cat train.log; fail "train"; }
cat train.log
if grep -q "fused CPU kernels unavailable" train.log; then fail "the fused CPU kernels did not compile from the installed package"; fi
ls "$DSMPNN_CACHE_DIR"/ecconv_kernels-*.so > /dev/null 2>&1 || fail "no compiled kernel library in $DSMPNN_CACHE_DIR"
step "dsmpnn evaluate"
"$DSMPNN" evaluate run --split test || fail "evaluate"
step "dsmpnn predict"
test_file="data/$("$PY" -c "import json; print(json.load(open('data/manifest.json'))['splits']['test'][0])")"
"$DSMPNN" predict run --input "$test_file" --out pred.vtu || fail "predict"
"$DSMPNN" predict run --input "$test_file" --out pred.npz > /dev/null || fail "predict (npz)"
test -s pred.vtu || fail "predict wrote no pred.vtu"
step "Python API (dsmpnn.load_run, predict_mesh, predict)"
"$PY" - "$test_file" <<'PYEOF' || fail "the Python API"
import sys
import numpy as np
import dsmpnn
run = dsmpnn.load_run("run")
result = run.predict_mesh(sys.argv[1])
with np.load("pred.npz") as z:
    assert np.allclose(result.pred, z["pred"], rtol=1e-9, atol=1e-12), "predict_mesh differs from dsmpnn predict"
assert np.allclose(run.predict(result.sample.pos, result.sample.x), result.pred)
print(f"smoke: {run}: relative L2 {result.metrics['rel_l2']:.4f}, the same as dsmpnn predict")
PYEOF
step "done in $((SECONDS - start)) s"
if [ -z "${SMOKE_DIR:-}" ]; then rm -rf "$SMOKE"; fi
