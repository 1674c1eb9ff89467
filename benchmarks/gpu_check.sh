#!/usr/bin/env bash
# Issue 15: prove the CUDA path on a real GPU, in one run of at most ~8 minutes.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (device tool: OUT is set there)
#   bash benchmarks/gpu_check.sh --quick          # smaller sizes (~4 minutes)
#   bash benchmarks/gpu_check.sh --device cpu     # dry run here: every step's plumbing, tiny sizes; CUDA-only
#                                                 # parts say "skipped: no CUDA"
# Env: OUT (default ./gpu_check_out), DEVICE (cuda|cpu, as --device), QUICK=1 (as --quick), PYTHON (a python to
# try first), BUDGET_S (seconds for all steps; default 460, quick 240, cpu 300).
#
# Steps, each under its own `timeout` (and never past the budget), output in $OUT (at most 8 small files):
#   env.txt       nvidia-smi, the python chosen, torch / CUDA / NCCL / Triton versions, missing packages
#   tests.txt     pytest -m cuda (the CUDA-parametrised tests: ECConv/MPNN vs float64, padded compiled path,
#                 train + predict on cuda, 1-rank NCCL group through the halo exchange, 2-rank if 2 GPUs)
#   conv.json     dsmpnn bench conv --device D vs PyG NNConv, issue 5's reference case (N=20,000, r=0.02)
#   conv_large.json  the same at N=200,000 (NNConv's [E, C, C] weights: ~20 GB), full run only
#   scale.json    dsmpnn bench scale --device D: predict up to 1e7 nodes, train up to 1e6, one N per step
#   train.json    Adam-step throughput, same config and steps on the GPU and on this machine's CPU
#   summary.json  every step's status and seconds, and the key numbers
#   log.txt       everything the steps printed
# Exit status: 0 when every step ran (ok or skipped), 1 when one failed or timed out, 3 without a CUDA torch.

set -u
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n 2,26p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --device cpu|cuda, --quick)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cpu|cuda) ;; *) echo "gpu_check.sh: --device must be cpu or cuda, got $DEVICE" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/log.txt
STEPS=$WORK/steps.tsv
: >"$LOG"; : >"$STEPS"
export PYTHONUNBUFFERED=1 GPU_CHECK_DEVICE=$DEVICE
if [ "$DEVICE" = cpu ]; then BUDGET_S=${BUDGET_S:-300}; elif [ "$QUICK" = 1 ]; then BUDGET_S=${BUDGET_S:-240}; else BUDGET_S=${BUDGET_S:-460}; fi
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$STEPS"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

# step NAME LIMIT_S CMD...: run CMD under timeout min(LIMIT_S, budget left), output to the log; records the status
step() {
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  if [ "$rest" -lt 15 ]; then say "== $name: skipped: budget of ${BUDGET_S}s spent"; record "$name" skipped 0 "budget spent"; return 0; fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  say "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1; rc=$?
  local dt=$((SECONDS - t0)) status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; elif [ $rc -ne 0 ]; then status=failed; fi
  say "== $name: $status (exit $rc, ${dt}s)"
  record "$name" "$status" "$dt" "exit $rc"
  return $rc
}

# --- the environment and a python with torch (CUDA torch for --device cuda) -------------------------------------
{
  echo "date: $(date -Is)   device: $DEVICE   quick: $QUICK   budget: ${BUDGET_S}s   tree: $ROOT"
  echo "git: $(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null || echo 'no git')"
  echo "--- nvidia-smi"; timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo "--- nvidia-smi --query-gpu"; timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
  echo "--- cpu: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2)"
} >"$OUT/env.txt" 2>&1

PY=
for cand in ${PYTHON:-} python3 python "$ROOT/.venv/bin/python" /opt/torch/.venv/bin/python3 /usr/bin/python3; do
  command -v "$cand" >/dev/null 2>&1 || continue
  info=$(timeout 60 "$cand" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>/dev/null) || continue
  echo "candidate $cand: torch $info" >>"$OUT/env.txt"
  if [ "$DEVICE" = cpu ] || [ "${info##* }" = True ]; then PY=$(command -v "$cand"); break; fi
done
if [ -z "$PY" ]; then
  msg="no python here has a CUDA-enabled torch (torch.cuda.is_available() is False in every candidate: see env.txt); nothing was run. Carry a CUDA torch or run on a machine with one."
  echo "ERROR: $msg" | tee -a "$OUT/env.txt" "$LOG" >&2
  printf '{"error": "%s", "device": "%s"}\n' "$msg" "$DEVICE" >"$OUT/summary.json"
  exit 3
fi

# the package from the working tree, no network: src/ on the path; wheels carried in .whl/ are unpacked first
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$ROOT"/.whl/*.whl >>"$OUT/env.txt" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
"$PY" - >>"$OUT/env.txt" 2>&1 <<'EOF'
import importlib.util, platform, sys
import torch
print(f"python {platform.python_version()} at {sys.executable}")
print(f"torch {torch.__version__}, torch.version.cuda {torch.version.cuda}, cuda available {torch.cuda.is_available()}, "
      f"devices {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
if torch.cuda.is_available():
    for k in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(k)
        print(f"  cuda:{k} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
    print(f"nccl {'.'.join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else 'NOT available'}")
    print(f"tf32: matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}")
mods = ["numpy", "scipy", "yaml", "matplotlib", "tqdm", "h5py", "meshio", "pymetis", "skfem", "gmsh", "tensorboard",
        "torch_geometric", "pytest", "hypothesis", "triton"]
print("present: " + ", ".join(m for m in mods if importlib.util.find_spec(m)))
print("MISSING: " + (", ".join(m for m in mods if not importlib.util.find_spec(m)) or "none"))
import dsmpnn.cli, dsmpnn.train  # noqa: E401 - fails here, visibly, if a dependency the package imports is missing
print("import dsmpnn: ok")
EOF
cat "$OUT/env.txt" | tee -a "$LOG" >/dev/null
tail -n 12 "$OUT/env.txt"
HAS_PYG=$("$PY" -c 'import importlib.util as u; print(int(u.find_spec("torch_geometric") is not None))')
HAS_PYTEST=$("$PY" -c 'import importlib.util as u; print(int(u.find_spec("pytest") is not None))')
HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
DSMPNN=("$PY" -m dsmpnn.cli)

# --- sizes --------------------------------------------------------------------------------------------------
if [ "$DEVICE" = cpu ]; then      # dry run: plumbing only
  CONV=(--nodes 2000 --radius 0.06 --channels 8 --hidden 16 --repeats 1 --dense-size 256)
  CONV_LARGE=()
  SCALE_PREDICT=(2000 5000); SCALE_TRAIN=(2000); SCALE_CH=(--channels 8 --layers 2)
  TRAIN=(--nodes 2000 --steps 2 --warmup 1 --devices cpu,cuda)
  CHUNK=()
elif [ "$QUICK" = 1 ]; then
  CONV=(--nodes 20000 --radius 0.02 --channels 32 --hidden 64 --repeats 3)
  CONV_LARGE=()
  SCALE_PREDICT=(100000 1000000); SCALE_TRAIN=(100000); SCALE_CH=()
  TRAIN=(--nodes 20000 --steps 5 --warmup 2 --devices cuda,cuda@262144,cpu)
  CHUNK=(--edge-chunk 262144)
else
  CONV=(--nodes 20000 --radius 0.02 --channels 32 --hidden 64 --repeats 5)
  CONV_LARGE=(--nodes 200000 --radius 0.00632 --channels 32 --hidden 64 --repeats 2)
  SCALE_PREDICT=(100000 1000000 10000000); SCALE_TRAIN=(100000 1000000); SCALE_CH=()
  TRAIN=(--nodes 50000 --steps 10 --warmup 3 --devices cuda,cuda@262144,cpu)
  CHUNK=(--edge-chunk 262144)
fi
NNCONV=(); [ "$HAS_PYG" = 1 ] || { NNCONV=(--no-nnconv); say "torch_geometric missing: bench conv runs without NNConv (no ratios)"; }

FAILED=0
parts=()
# scale MODE N...: growth with N on the device, each N its own step, largest last; a timeout or failure stops MODE
scale() {
  local mode=$1 n f; shift
  for n in "$@"; do
    f=$WORK/scale_${mode}_$n.json
    if step "scale_${mode}_$n" 240 "${DSMPNN[@]}" bench scale --device "$DEVICE" --mode "$mode" --nodes "$n" "${SCALE_CH[@]}" "${CHUNK[@]}" --out "$f"; then
      parts+=("$f")
    else
      FAILED=1; say "   (larger $mode sizes not tried)"; return
    fi
  done
}

# 1. the CUDA-parametrised tests (a dry run runs their CPU cases, and shows the CUDA ones SKIPPED with the reason)
if [ "$HAS_PYTEST" = 1 ]; then
  if [ "$DEVICE" = cuda ]; then SEL=(-m cuda tests/test_devices.py tests/bench/test_scale.py)
  else SEL=(tests/test_devices.py tests/bench/test_scale.py::test_scale_point_on_device); fi
  step tests 200 "$PY" -m pytest -q -rs -p no:cacheprovider "${SEL[@]}" || FAILED=1
  sed -n '/^== tests (/,/^== tests: /p' "$LOG" | tail -n 150 >"$OUT/tests.txt"  # pytest's own output, its end
else
  say "== tests: skipped: pytest is missing"; record tests skipped 0 "pytest missing"
fi

# 2. ECConv vs NNConv on the device, issue 5's reference case
step conv 120 "${DSMPNN[@]}" bench conv --device "$DEVICE" "${CONV[@]}" "${CHUNK[@]}" "${NNCONV[@]}" --out "$OUT/conv.json" || FAILED=1

# 3. prediction up to the largest mesh (aim: 1e7 nodes on one GPU)
scale predict "${SCALE_PREDICT[@]}"

# 4. training-step throughput: the same config and steps on the GPU and on the CPU
step train 150 "$PY" benchmarks/gpu_check.py train "${TRAIN[@]}" --out "$OUT/train.json" || FAILED=1

# 5. what the budget still allows: ECConv vs NNConv at 10x the edges, training growth with N
if [ ${#CONV_LARGE[@]} -gt 0 ]; then
  step conv_large 120 "${DSMPNN[@]}" bench conv --device "$DEVICE" "${CONV_LARGE[@]}" "${CHUNK[@]}" "${NNCONV[@]}" --out "$OUT/conv_large.json" || FAILED=1
fi
scale train "${SCALE_TRAIN[@]}"
[ ${#parts[@]} -gt 0 ] && "$PY" benchmarks/gpu_check.py merge-scale --out "$OUT/scale.json" "${parts[@]}" >>"$LOG" 2>&1

if [ "$DEVICE" = cpu ]; then say "NOTE: dry run on CPU: every CUDA-only part above was skipped (skipped: no CUDA); nothing was verified on a GPU"; fi
"$PY" benchmarks/gpu_check.py summary --dir "$OUT" --steps "$STEPS" --train "$OUT/train.json" --out "$OUT/summary.json" 2>&1 | tee -a "$LOG"
say "total $((SECONDS - START))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $FAILED
