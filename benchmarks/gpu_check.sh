#!/usr/bin/env bash
# The GPU check of issue 16, one prepared run: needs no network, runs from the
# repository root, writes every result under $OUT, and is sized to finish within
# 8 minutes on one H100 (each step has its own time limit, below).
#
#   OUT=/path/to/results PYTHONPATH=. bash benchmarks/gpu_check.sh      # on the GPU machine
#   GPU_CHECK_QUICK=1 OUT=/tmp/gpu_check PYTHONPATH=. bash benchmarks/gpu_check.sh
#                      # the dry run: shrunk (one test file, tiny points, CPU allowed,
#                      # kernels in interpret mode, torch on the CPU when installed):
#                      # every step's imports, names and flags, end to end on any
#                      # machine in about 3 minutes. Run it before a GPU session.
#
# Steps (their output in $OUT/gpu_check.log, each step's exit status in
# $OUT/summary.txt; JSON of the two benchmarks beside them):
#   1. the device and the versions (nvidia-smi, jax, jaxlib, torch, numpy, pytest);
#   2. the suite's GPU command of docs/testing.md, fast tier;
#   3. benchmarks/bench_bptt.py on its grid plus issue 16's two large points
#      (--large; timed at JAX's default precision, agreement at "highest"):
#      $OUT/bench_bptt.json;
#   4. benchmarks/sweep_defaults.py, the unroll / chunk-rows / recompute-chunk sweep
#      behind bptt_jax.core.schedule.SCHEDULES["gpu"]: $OUT/sweep_defaults.json;
#   5. benchmarks/gpu_kernels.py, the Pallas kernels (issue 17): lowering, their tests on
#      the device, the recursions and the full loss and gradient against the scan,
#      autodiff and cuDNN's nn.RNN: $OUT/gpu_kernels.json;
#   6. benchmarks/bench_gated.py, the LSTM and GRU (issue 23; kernel "scan": their Pallas
#      kernels are refused on a GPU) hand vs autodiff vs cuDNN's nn.LSTM/nn.GRU at its
#      three points: $OUT/bench_gated.json.
# At most 8 files come back from $OUT; this script writes 7 (the log, summary.txt,
# bench_bptt.json and .png, sweep_defaults.json, gpu_kernels.json, bench_gated.json).
set -u -o pipefail
OUT=${OUT:?set OUT to the folder for the results}
QUICK=${GPU_CHECK_QUICK:-0}
PY=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
# Several test workers share the one GPU: none may claim most of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: >"$LOG"
: >"$OUT/summary.txt"
failed=0

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output to the log.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
  start=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc after $(($(date +%s) - start)) s" | tee -a "$LOG" "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
}

# bptt_jax reads its version from the installed metadata: on a machine where it is
# not installed, a minimal dist-info on the path stands in (offline, no pip).
if ! "$PY" -c "import importlib.metadata as m; m.version('bptt_jax')" 2>/dev/null; then
  SHIM=$(mktemp -d)
  VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
  mkdir -p "$SHIM/bptt_jax-$VERSION.dist-info"
  printf 'Metadata-Version: 2.1\nName: bptt_jax\nVersion: %s\n' "$VERSION" \
    >"$SHIM/bptt_jax-$VERSION.dist-info/METADATA"
  printf '[console_scripts]\nbptt-jax = bptt_jax.app.cli.main:run\n' \
    >"$SHIM/bptt_jax-$VERSION.dist-info/entry_points.txt"
  export PYTHONPATH=$PYTHONPATH:$SHIM
fi

if [ "$QUICK" = 1 ]; then
  TESTS=(tests/api/test_precision.py -m "not slow" -n 0)
  BENCH=(--grid 65,64,8,32 --quick)
  SWEEP=(--quick)
  LIMITS=(60 120 120 120 240 240)
  KERNELS=(--quick)
  GATED=(--repeats 2 --point 65,16,4,12 --point 2000,16,2,6) # one-hot and nn.Embedding
else
  # the fast tier, on 4 workers (XLA's compilations are most of its time)
  TESTS=(-m "not slow" -n "${GPU_TEST_WORKERS:-4}")
  BENCH=(--large --repeats 10 --unroll-repeats 0)
  SWEEP=(--repeats 5 --grid 65,256,32,64 --grid 10000,512,64,128 --grid 65,64,1,1000
    --grid 65,256,32,1024 --grid 65,1024,256,256)
  # 470 s, and at most 10 s more each to stop a step at its limit (the gated step's 60 s
  # taken from the others when it was added)
  LIMITS=(20 135 105 60 90 60)
  KERNELS=(--repeats 10)
  GATED=(--repeats 5)
fi

step device "${LIMITS[0]}" bash -c "
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY - <<'EOF'
import importlib.metadata as m, platform
import jax
print('python', platform.python_version(), platform.platform())
for name in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'numpy', 'optax',
             'torch', 'pytest', 'pytest-xdist', 'hypothesis'):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        pass
print('backend', jax.default_backend(), 'devices', jax.devices())
print('device_kind', jax.devices()[0].device_kind)
from bptt_jax.core.schedule import SCHEDULES
print('bptt_jax defaults', {k: v._asdict() for k, v in SCHEDULES.items()})
EOF"

# docs/testing.md's GPU command (conftest.py puts every comparison at "highest");
# quick: whatever platform this machine has.
PLATFORM=()
[ "$QUICK" = 1 ] || PLATFORM=(JAX_PLATFORMS=cuda)
step tests "${LIMITS[1]}" env "${PLATFORM[@]}" "$PY" -m pytest -p no:cacheprovider -q "${TESTS[@]}"

step bench "${LIMITS[2]}" "$PY" benchmarks/bench_bptt.py "${BENCH[@]}" \
  --json "$OUT/bench_bptt.json" --png "$OUT/bench_bptt.png"

step sweep "${LIMITS[3]}" "$PY" benchmarks/sweep_defaults.py "${SWEEP[@]}" \
  --json "$OUT/sweep_defaults.json"

# The Pallas kernels (issue 17): lowered with interpret=False, tests/core/test_kernels.py
# on the device, the recursions alone and the full loss and gradient against the scan,
# autodiff and cuDNN (benchmarks/gpu_kernels.py; gpu_kernels.json, rewritten after each
# section).
step pallas "${LIMITS[4]}" "$PY" benchmarks/gpu_kernels.py "${KERNELS[@]}" --out "$OUT"

# The gated cells (issue 23) beside cuDNN's nn.LSTM/nn.GRU (bench_gated.json, rewritten
# after each point, lstm first).
step gated "${LIMITS[5]}" "$PY" benchmarks/bench_gated.py "${GATED[@]}" \
  --json "$OUT/bench_gated.json"

echo "=== done: $(tr '\n' ';' <"$OUT/summary.txt")" | tee -a "$LOG"
exit "$failed"
