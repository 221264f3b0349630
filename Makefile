# Set-up and everyday commands. Only Python >= 3.11 is needed; everything else is installed into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint typecheck pytest chromium audit-deps clean bench bench-smoke

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(RUNTIME_STAMP)

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@ $(RUNTIME_STAMP)

## run: install, migrate the embedded SQLite database, seed the demo, and serve on http://127.0.0.1:8080
run: $(RUNTIME_STAMP)
	$(BIN)/referral db upgrade
	$(BIN)/referral demo
	$(BIN)/referral serve

## test: lint, type checks, and the whole test suite on SQLite and PostgreSQL
test: lint typecheck pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP) chromium
	$(BIN)/pytest

## audit-deps: check the installed dependencies against known vulnerabilities (needs pypi.org's JSON API)
audit-deps: $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet 'pip-audit>=2.7'
	$(BIN)/pip-audit --strict --progress-spinner off --skip-editable

## chromium: Debian's headless Chromium for the dashboard's browser test (installed once, if apt-get can)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium for the dashboard browser test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium: the browser test will be skipped"; }

## bench: the full pipeline against the bare limit on SQLite and PostgreSQL (a few minutes); the table is
## printed and the run written to bench/results/. BENCH_ARGS passes options, e.g. BENCH_ARGS="--workers 2".
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## bench-smoke: the same harness for a few seconds per database (its test in `make test` does this too)
bench-smoke: $(RUNTIME_STAMP)
	$(BIN)/python -m bench --smoke --out "$${TMPDIR:-/tmp}/referral-bench-smoke"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
