#!/usr/bin/env bash
# The prepared GPU check (issue 12): parity tests on the GPU, float32 accuracy under TF32, and
# the benchmark at 8x21x256x256 and 8x21x512x512 with the baseline rows. No installs, no network.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]                  # on the GPU machine (default OUT_DIR:
#                                                           # benchmarks/)
#   bash benchmarks/gpu_check.sh --cpu-dry-run [OUT_DIR]    # the same steps, tiny, on the CPU
#   bash benchmarks/gpu_check.sh --sequential [OUT_DIR]     # test steps one after the other
#
# It writes OUT_DIR/results-cuda.json (the benchmark's JSON) and OUT_DIR/gpu-check.log (every
# step's command, output and exit status). Steps, each under `timeout`:
#   env       versions, devices, CPU model and flags, nvidia-smi
#   parity    the default-tier parity tests of both backends, torch tensors on the GPU
#             (RMI_TEST_DEVICE=cuda), JAX on its default device, the GPU
#   x64       the float64 JAX suite, parity_tests/x64, with JAX_ENABLE_X64=1
#   tf32      tests/test_float32_accuracy.py and tests/test_precision.py (both tiers) under the
#             TF32 settings users make: JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32, and
#             torch.set_float32_matmul_precision("high") before each test (-p benchmarks.tf32)
#   accuracy  python -m benchmarks.float32_accuracy under the same settings: the figures
#   bench     python -m benchmarks.bench --device cuda --sizes 256 512 (every row), which prints
#             the table and the issue's targets judged on this run; rmi_jax and rmi_torch-f32
#             run the float64 lag-product statistics there (docs/computation.md#lag-products)
# The four test steps run side by side (they share the GPU; the benchmark then runs alone), unless
# --sequential is given or the GPU's compute mode is not Default. The script goes on after a
# failed step and exits 1 at the end if any step failed or timed out.
#
# Time budget (the issue allows 8 minutes in all): env 20 s; the test steps 240 s of wall time
# (side by side, 240 s each; one after the other parity 120 s, x64 55 s, tf32 45 s, accuracy
# 20 s); bench 180 s (90 s at most per measured row and shape); `timeout -k 5` adds at most 5 s a
# step. The JAX CUDA install's first compilations are slow: the test steps keep their compiled
# programs in a persistent cache (RMI_JAX_CACHE, default /tmp/rmi-loss-jax-cache), so a second run
# on the same machine compiles little; the benchmark does not use it.

set -u -o pipefail

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

DRY=0
SEQUENTIAL=0
OUT_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry-run) DRY=1 ;;
        --sequential) SEQUENTIAL=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) OUT_DIR=$1 ;;
    esac
    shift
done

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$OUT_DIR" ]; then
    if [ "$DRY" = 1 ]; then OUT_DIR="${TMPDIR:-/tmp}/rmi-gpu-check-dry"; else OUT_DIR="$REPO_ROOT/benchmarks"; fi
fi
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
cd "$REPO_ROOT" || exit 2

PYTHON=${PYTHON:-python}
command -v "$PYTHON" > /dev/null || PYTHON=python3
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -rfE --durations=10)
TF32_ENV=(JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32)
# Several processes share the GPU in the test steps: none may take JAX's default 75% up front.
TEST_ENV=(XLA_PYTHON_CLIENT_PREALLOCATE=false
    JAX_COMPILATION_CACHE_DIR="${RMI_JAX_CACHE:-/tmp/rmi-loss-jax-cache}"
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0)

ENV_BUDGET=20
TESTS_BUDGET=240
BENCH_BUDGET=180
BENCH_ROW_TIMEOUT=90
# The rows the issue's targets name first in each size, so a run cut short keeps those.
BENCH_ROWS=(baseline-f64 baseline-f32 rmi_jax rmi_torch-f32 floor rmi_jax-x64 rmi_torch-f64)

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    export JAX_PLATFORMS=cpu
    RESULTS="$OUT_DIR/results-cpu-dry.json"
    LOG="$OUT_DIR/gpu-check-cpu-dry.log"
    PARITY_TESTS=(parity_tests/test_torch.py parity_tests/test_jax_float32.py
        -k "dense-default-logits")
    X64_TESTS=(parity_tests/x64/test_jax_x64.py -k "dense-default-logits")
    TF32_TESTS=(tests/test_float32_accuracy.py tests/test_precision.py -m "full or not full"
        -k "exact-3 or dense-c1 or restore")
    ACCURACY_ARGS=(--size 64)
    BENCH_ARGS=(--sizes 32 --repeats 1 --warmup 1)
else
    DEVICE=cuda
    RESULTS="$OUT_DIR/results-cuda.json"
    LOG="$OUT_DIR/gpu-check.log"
    PARITY_TESTS=(parity_tests --ignore=parity_tests/x64)
    X64_TESTS=(parity_tests/x64)
    TF32_TESTS=(tests/test_float32_accuracy.py tests/test_precision.py -m "full or not full")
    ACCURACY_ARGS=(--size 256)
    BENCH_ARGS=(--sizes 256 512)
fi
STEPS_DIR="$OUT_DIR/gpu-check-steps" # the side-by-side steps' own output, as it comes
: > "$LOG"

declare -a NAMES=() CODES=() SECONDS_TAKEN=()

say() {
    echo "$*" | tee -a "$LOG"
}

quoted() { # the command as one line that a shell would run as given
    printf '%q ' "$@"
}

record() { # record NAME EXIT_CODE SECONDS
    NAMES+=("$1")
    CODES+=("$2")
    SECONDS_TAKEN+=("$3")
    local verdict="ok"
    case "$2" in
        0) ;;
        124 | 137) verdict="TIMED OUT" ;;
        *) verdict="FAILED" ;;
    esac
    say "=== $1: exit $2 ($verdict) after $3 s"
}

run_live() { # run_live NAME BUDGET CMD...: output tee'd into the log as it comes
    local name=$1 budget=$2
    shift 2
    local start=$SECONDS
    say "=== $name (budget ${budget} s): $(quoted "$@")"
    timeout -k 5 "$budget" "$@" 2>&1 | tee -a "$LOG"
    record "$name" "${PIPESTATUS[0]}" $((SECONDS - start))
}

start_background() { # start_background NAME BUDGET CMD...: output to the step's own file
    local name=$1 budget=$2
    shift 2
    echo "(budget ${budget} s): $(quoted "$@")" > "$STEPS_DIR/$name.cmd"
    (
        start=$SECONDS
        timeout -k 5 "$budget" "$@" > "$STEPS_DIR/$name.log" 2>&1
        echo "$? $((SECONDS - start))" > "$STEPS_DIR/$name.rc"
    ) &
}

collect_background() { # collect_background NAME: its output into the log, then its status
    local name=$1 code seconds
    say "=== $name $(cat "$STEPS_DIR/$name.cmd")"
    tee -a "$LOG" < "$STEPS_DIR/$name.log"
    read -r code seconds < "$STEPS_DIR/$name.rc" || { code=1; seconds=0; }
    record "$name" "$code" "$seconds"
}

environment() {
    "$PYTHON" --version
    echo "repository: $(git rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - << 'EOF'
from benchmarks.machine import cpu_description, probe

print("cpu:", cpu_description())
for key, value in probe().items():
    print(f"{key}: {value}")
EOF
}

compute_mode() {
    command -v nvidia-smi > /dev/null || { echo "Default"; return; }
    nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2> /dev/null | head -n 1
}

say "gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC'), device $DEVICE, dry run $DRY, out $OUT_DIR"
export PYTHON
export -f environment
run_live env "$ENV_BUDGET" bash -c environment

mode=$(compute_mode)
if [ "$SEQUENTIAL" = 0 ] && [ "$mode" != "Default" ]; then
    say "GPU compute mode '$mode': the test steps run one after the other"
    SEQUENTIAL=1
fi

PARITY=(env "${TEST_ENV[@]}" RMI_TEST_DEVICE="$DEVICE" "${PYTEST[@]}" -q "${PARITY_TESTS[@]}")
X64=(env "${TEST_ENV[@]}" JAX_ENABLE_X64=1 RMI_TEST_DEVICE="$DEVICE" "${PYTEST[@]}" -q
    "${X64_TESTS[@]}")
TF32=(env "${TEST_ENV[@]}" "${TF32_ENV[@]}" RMI_TEST_DEVICE="$DEVICE" "${PYTEST[@]}"
    -p benchmarks.tf32 "${TF32_TESTS[@]}")
ACCURACY=(env "${TEST_ENV[@]}" "${TF32_ENV[@]}" "$PYTHON" -m benchmarks.float32_accuracy
    --device "$DEVICE" --torch-matmul-precision high "${ACCURACY_ARGS[@]}")

if [ "$SEQUENTIAL" = 1 ]; then
    run_live parity 120 "${PARITY[@]}"
    run_live x64 55 "${X64[@]}"
    run_live tf32 45 "${TF32[@]}"
    run_live accuracy 20 "${ACCURACY[@]}"
else
    say "=== parity, x64, tf32 and accuracy run side by side (budget ${TESTS_BUDGET} s each)"
    mkdir -p "$STEPS_DIR"
    start_background parity "$TESTS_BUDGET" "${PARITY[@]}"
    start_background x64 "$TESTS_BUDGET" "${X64[@]}"
    start_background tf32 "$TESTS_BUDGET" "${TF32[@]}"
    start_background accuracy "$TESTS_BUDGET" "${ACCURACY[@]}"
    wait
    for name in parity x64 tf32 accuracy; do
        collect_background "$name"
    done
fi

run_live bench "$BENCH_BUDGET" "$PYTHON" -m benchmarks.bench --device "$DEVICE" "${BENCH_ARGS[@]}" \
    --rows "${BENCH_ROWS[@]}" --timeout "$BENCH_ROW_TIMEOUT" --out "$RESULTS"

say ""
say "summary ($SECONDS s in all; results $RESULTS, log $LOG):"
failed=0
for i in "${!NAMES[@]}"; do
    say "  ${NAMES[$i]}: exit ${CODES[$i]} in ${SECONDS_TAKEN[$i]} s"
    [ "${CODES[$i]}" = 0 ] || failed=1
done
if [ "$failed" = 1 ]; then
    say "gpu_check.sh: at least one step failed or timed out"
    exit 1
fi
say "gpu_check.sh: every step passed"
