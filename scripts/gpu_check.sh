#!/usr/bin/env bash
# The GPU check, as ONE script for the GPU machine (no network; see /work/shared/gpu/README.md).
# It runs in the project root there, with $OUT an empty folder whose files come back:
#   1. installs .whl/*.whl into /tmp/site (make .whl/ first, here: bash scripts/gpu_wheels.sh);
#   2. prints nvidia-smi, the python/torch/CUDA versions, and which needed modules import;
#   3. runs the CUDA-marked tests (every test module using the cuda marker, and tests/test_cuda_graph.py);
#   4. runs `scripts/bench.py --device cuda`, which writes results/bench/<card name>.md;
#   5. copies results/bench/*.md into $OUT (all logs are written there as it goes).
# Every part has its own time limit (the whole script stays under ~8 minutes) and a part that
# fails or times out does not stop the next; the exit status is 1 if any part failed.
#
#   bash scripts/gpu_check.sh                     # on the GPU machine (carry .whl)
#   PYTHON=.venv/bin/python OUT=/tmp/gpu-out bash scripts/gpu_check.sh --cpu-smoke
#       # here, on the CPU: the same steps with --device cpu, --quick, the graph section run
#       # eagerly, and the bench file written to $OUT/bench/ (results/bench/ is not touched)
#
# Settings (environment): PYTHON (python3), OUT (/tmp/gpu_check_out), T_TESTS (seconds, 110),
# T_BENCH (320), REPEATS (4: the step table takes 3x as many rounds, each half as long), SWEEP_STEPS
# (500: train.steps of the sweep; the preset's own is 1000).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[[ ${1:-} == --cpu-smoke ]] && SMOKE=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check_out}
T_TESTS=${T_TESTS:-110}
T_BENCH=${T_BENCH:-320}
REPEATS=${REPEATS:-4}
SWEEP_STEPS=${SWEEP_STEPS:-500}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 WANDB_MODE=disabled
status=0
begin=$SECONDS

log() { echo "[gpu_check +$((SECONDS - begin))s] $*" | tee -a "$OUT/gpu_check.log"; }

# part NAME LIMIT_S COMMAND...: run COMMAND under `timeout` (SIGTERM, then SIGKILL 20 s later),
# its output in $OUT/NAME.log, the last lines echoed; a failure is noted and the script goes on.
part() {
  local name=$1 limit=$2 rc
  shift 2
  log "$name: start (limit ${limit} s): $*"
  timeout -k 20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  if [[ " ${OK_RC:-0} " == *" $rc "* ]]; then
    log "$name: ok (exit $rc)"
  else
    log "$name: FAILED (exit $rc; 124 = timed out)"
    status=1
  fi
}

# 1. wheels (on the CPU smoke run only the pure-Python ones: the venv has the rest)
rm -rf /tmp/site
if [[ $SMOKE == 1 ]]; then wheels=(.whl/*-none-any.whl); else wheels=(.whl/*.whl); fi
if [[ -e ${wheels[0]} ]]; then
  TAIL=5 part install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site "${wheels[@]}"
else
  log "install: no .whl/ here (make it with: bash scripts/gpu_wheels.sh; carry .whl)"
  status=1
fi
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}

# 2. the machine
{
  command -v nvidia-smi > /dev/null && nvidia-smi
  timeout 60 "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuda available", torch.cuda.is_available(), "| threads", torch.get_num_threads())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for name in ["numpy", "scipy", "sklearn", "mpmath", "threadpoolctl", "pytest", "hypothesis", "hydra",
             "omegaconf", "hydra_plugins.testbed_batched_sweeper.batched_sweeper", "testbed.app.main",
             "testbed.engine.cuda_graph"]:
    try:
        module = importlib.import_module(name)
        print(f"  import {name}: ok {getattr(module, '__version__', '')}")
    except Exception as error:
        print(f"  import {name}: MISSING ({type(error).__name__}: {error})")
EOF
} 2>&1 | tee "$OUT/machine.log"

# 3. the CUDA tests: the modules that use the cuda marker (through tests/helpers.py or directly)
mapfile -t modules < <(grep -lE "backend_params|device_params|DEVICES|mark\.cuda" tests/test_*.py)
[[ -e tests/test_cuda_graph.py ]] && ! printf '%s\n' "${modules[@]}" | grep -qx tests/test_cuda_graph.py \
  && modules+=(tests/test_cuda_graph.py)
# (on the CPU smoke run, exit 5: none collected, as tests/helpers.py makes cuda cases only where CUDA is)
ok=0
[[ $SMOKE == 1 ]] && ok="0 5"
OK_RC=$ok TAIL=15 part tests "$T_TESTS" "$PY" -m pytest -q -m cuda -p no:cacheprovider "${modules[@]}"

# 4. the benchmark (a SIGTERM at the time limit still writes what was measured)
if [[ $SMOKE == 1 ]]; then
  TAIL=12 part bench "$T_BENCH" "$PY" scripts/bench.py --device cpu --quick --ks 1,4 --graph-on-cpu \
    --sweep-steps 2 --out "$OUT/bench"
else
  TAIL=60 part bench "$T_BENCH" "$PY" scripts/bench.py --device cuda --repeats "$REPEATS" \
    --sweep-steps "$SWEEP_STEPS" --sweep-timeout 150 --out results/bench
fi

# 5. results
if [[ $SMOKE == 0 ]]; then
  mkdir -p "$OUT/bench"
  cp results/bench/*.md "$OUT/bench/" 2> /dev/null
fi
log "summary of $OUT/bench:"
grep -hE "^# Benchmark|^Target|^Stacked|^Batched|^Same results|Interrupted|Failed|failed" "$OUT"/bench/*.md \
  | tee -a "$OUT/gpu_check.log"
grep -hE "passed|failed|error" "$OUT/tests.log" | tail -n 3 | tee -a "$OUT/gpu_check.log"
log "done: exit $status"
exit $status
