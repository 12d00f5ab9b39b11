# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(PYTHON) ./scripts/system-packages.sh
	$(BIN)/python -m bench.demo

test: $(STAMP)
	PYTHON=$(PYTHON) ./scripts/system-packages.sh
	rm -f .coverage .coverage.*
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --cov --cov-report= tests
	NUMBA_DISABLE_JIT=1 $(BIN)/pytest -q -p no:cacheprovider -n 2 --cov --cov-append --cov-report= \
		-m "not slow" tests/billing
	$(BIN)/coverage report --fail-under=88

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/prepay bench billing

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache
