# The handful of commands a newcomer needs; the README's two commands are `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test dev rust-test rust-memcheck import-layers py-test bench wheel clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Install the package (builds the native core) and run the quickstart.
quickstart: $(PY)
	$(PY) -m pip install ".[tensorboard]"
	$(PY) examples/quickstart.py

# Install in development mode with the test extras, then run every test: Rust core, then Python.
dev: $(PY)
	$(PY) -m pip install -e ".[test]"

test: dev rust-test rust-memcheck import-layers py-test

# Lints first (no unwrap/expect/panic on reachable paths: see [lints.clippy] in rust/Cargo.toml),
# then the Rust tests (the checkpoint reader's fuzz target included).
rust-test:
	cargo clippy --workspace --all-targets --features python -- -D warnings
	cargo test --workspace

# The Rust tests that touch tensor memory, under valgrind's memcheck (about a minute).
rust-memcheck:
	scripts/memcheck.sh

# The import layers (.importlinter): no package imports from a layer above it.
import-layers:
	$(PY) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

py-test:
	$(PY) -m pytest

bench: dev
	$(PY) -m pip install -e ".[test,bench]"
	$(PY) -m ferrotrain.bench

wheel: $(PY)
	$(PY) -m pip install "maturin>=1.9.4,<2"
	$(VENV)/bin/maturin build --release --out dist

clean:
	rm -rf target dist $(VENV) python/ferrotrain/*.so
