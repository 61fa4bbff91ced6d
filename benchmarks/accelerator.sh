#!/usr/bin/env bash
# The accelerator figures of issue 16 in one short run (< 8 min on one GPU):
# training throughput (ResNet56 and ResNet-50, plain and TPP), the Jacobian
# spectrum rows, the stochastic spectrum (ResNet56/100 classes error table,
# ResNet-50 at 1,000 classes), and 300 steps of a Table 1 cell (ResNet56, TPP
# on, synthetic CIFAR-shaped data). Every section prints the device kind and
# its peak memory (device statistics).
#
#   bash benchmarks/accelerator.sh                 # on the GPU/TPU machine
#   ACCEL_TINY=1 bash benchmarks/accelerator.sh    # CPU dry run at tiny size (~minutes)
#
# Needs jax (with the accelerator's plugin), flax, optax, orbax, numpy and
# scipy importable by $PYTHON (default python3); isotpp is taken from this
# checkout (PYTHONPATH), nothing is installed. The log goes to $OUT (or
# /tmp/isotpp-accelerator)/accelerator.log. Each section has its own time
# limit, so one that hangs does not take the others with it.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
PY=${PYTHON:-python3}
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp/isotpp-accelerator}/accelerator.log"
mkdir -p "$(dirname "$log")"
: >"$log"

section() {  # section SECONDS command...
    local limit=$1; shift
    echo "== $* (limit ${limit}s)" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "== exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$log"
}

{ nvidia-smi -L 2>/dev/null || true; } | tee -a "$log"
section 60 "$PY" -c "import jax; d = jax.devices(); print('jax', jax.__version__, '|', len(d), 'x', d[0].device_kind, d[0].platform)"

if [ "${ACCEL_TINY:-0}" = 1 ]; then
    section 900 "$PY" bench_throughput.py --cases resnet20 --cifar-batch 8 --steps 2
    section 900 "$PY" bench_spectrum.py --rows mlp-linear,mlp-gram --rounds 1 --repeats 2
    section 900 "$PY" bench_spectrum_stochastic.py --budgets 4 --samples 2 --skip-resnet50
    section 900 "$PY" table1_cell.py --arch resnet20 --steps 5 --batch 8 --jsv-samples 4
else
    section 150 "$PY" bench_throughput.py --cases resnet56,resnet50 --steps 10
    section 100 "$PY" bench_spectrum.py --rows mlp-linear,r56-gram,r56-gram-batch,r56-jacobian --rounds 1 --repeats 3
    section 120 "$PY" bench_spectrum_stochastic.py --budgets 16,64 --samples 32 --resnet50-samples 8 \
        --memory-budget-gib 16
    section 90 "$PY" table1_cell.py --steps 300
fi
echo "log: $log"
