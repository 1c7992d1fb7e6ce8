#!/usr/bin/env bash
# Wheels of the packages benchmarks/gpu_suite.sh needs that the lent GPU machine's image lacks
# (Python 3.12, x86_64; the image has torch, torchvision, scikit-image, scipy, h5py, pandas, tqdm,
# pyyaml, opencv): the grad-cam reference (an sdist on PyPI, built here into a pure-Python wheel),
# its ttach, and jsonschema for the paper config's validation. Versions as in requirements*.txt.
# They land in .whl/ (git-ignored through .git/info/exclude), which the device call carries.
# Usage: bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  ttach==0.0.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
ls .whl
