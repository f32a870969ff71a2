# Quick start: `make demo` runs the lab; `make test` runs lint and the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/modeltheft demo

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Real model servers for tests/servers, each in a venv of its own (they pin their own FastAPI),
# made with the same python3; scikit-learn and numpy as in the project's venv, so that the joblib
# files the tests write load there. Quick when already installed.
SERVER_VENVS := .venv-mlserver/.installed .venv-kserve/.installed
.venv-%/.installed: tests/servers/requirements-%.txt | $(VENV)/.test-installed
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/pip install --quiet -r $< \
		"scikit-learn==$$($(BIN)/python -c 'import sklearn; print(sklearn.__version__)')" \
		"numpy==$$($(BIN)/python -c 'import numpy; print(numpy.__version__)')"
	touch $@

# Two workers (CI has 2 cores), one file per worker at a time (module fixtures build once),
# and one BLAS/OpenMP thread per worker so the two do not oversubscribe the cores.
TEST_WORKERS ?= 2
test: lint $(SERVER_VENVS)
	MODELTHEFT_REAL_SERVERS=1 KSERVE_PYTHON=$(CURDIR)/.venv-kserve/bin/python OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .venv-mlserver .venv-kserve runs build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
