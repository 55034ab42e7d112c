#!/usr/bin/env bash
# Build the native core in place (python/ferrotrain/_core.abi3.so) so the source tree imports
# with PYTHONPATH=python, without installing. `make dev` and `pip install -e .` do the same
# through maturin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYO3_BUILD_EXTENSION_MODULE=1 PYO3_PYTHON="$PY" cargo build --release --features python -p ferrotrain-python
cp target/release/lib_core.so python/ferrotrain/_core.abi3.so
