#!/usr/bin/env bash
# Fills .whl/ (git-ignored through .git/info/exclude) with every wheel scripts/gpu_check.sh needs on
# the GPU machine, which has no network: the shared set (hydra-core, omegaconf, antlr4, the joblib
# launcher; /work/shared/gpu/wheels.sh) plus hypothesis and sortedcontainers, which the CUDA-marked
# tests of tests/test_properties.py import. Run it here, from the project root, where pip reaches
# the package index:  bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED_WHEELS:-../shared/gpu/wheels.sh}
mkdir -p .whl .git/info
if ! ls .whl/hydra_core-*.whl .whl/omegaconf-*.whl .whl/antlr4_python3_runtime-*.whl >/dev/null 2>&1; then
  bash "$shared"
fi
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .whl \
  "hypothesis==${HYPOTHESIS_VERSION:-6.170.17}" "sortedcontainers==2.4.0"
ls -la .whl
