#!/usr/bin/env bash
# The checks that need an accelerator, in one run that fits a short device lease (at most 9.5 minutes):
# the gpu/tpu-marked tests (the kernels compiled), the kernel benches on full shapes, the trainer bench.
#
#   bash benchmarks/device_check.sh [OUT_DIR]      # OUT_DIR defaults to $OUT, else benchmarks/results
#
# Missing packages (grain on the lent GPU machines) travel as wheels in .whl/ (see the device tool's
# README); they are installed into /tmp/site first. Each step has its own time limit, and a failing
# step does not stop the others; the summary at the end says which passed.
set -u
out="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
backend=$(JAX_PLATFORMS= python3 -c "import jax; print(jax.default_backend())")
echo "backend: $backend"
declare -a summary

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name"
  JAX_PLATFORMS= timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-16s rc=%s' "$name" "$rc")")
}

# conftest.py pins JAX_PLATFORMS=cpu only when it is unset; an empty value lets JAX pick the device.
step tests 150 python3 -m pytest -q -m "$backend" tests/test_kernels.py tests/test_kernels_moe.py
step bench-moe 210 python3 -m pallas_kernels.bench moe --out "$out/kernels-moe.json"
step bench-attention 75 python3 -m pallas_kernels.bench attention --out "$out/kernels-attention.json"
step bench-matmul 45 python3 -m pallas_kernels.bench matmul --out "$out/kernels-matmul.json"
step bench-train 90 python3 benchmarks/train.py --preset small --mesh mesh_configs/gpu-1.yaml --out "$out/train.json"
printf '%s\n' "${summary[@]}"
