# webfarm — every target bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv check lint typecheck test demo bench soak system-deps clean

all: check test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages that the tests and benchmarks drive for real.
system-deps:
	./.ci/system-deps

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: check

# Test files spread over TEST_WORKERS processes (pytest-xdist), each file whole on one.
TEST_WORKERS ?= 2

test: $(STAMP)
	./.ci/system-deps --services
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

soak: $(STAMP)
	./.ci/system-deps --services
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/farm-dispatcher demo

bench: $(STAMP)
	./.ci/system-deps --bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
