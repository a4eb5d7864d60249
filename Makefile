# The two set-up commands are `make run` and `make test`; both install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: install run test lint bench bench-store bench-ticks bench-pages audit clean deps-dynamodb deps-browser web-assets

install: $(STAMP) web-assets

# htmx, lightweight-charts and axe-core, pinned in package-lock.json (needs Node's npm).
web-assets:
	@scripts/install-web-assets.sh

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/cnop serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src
	$(BIN)/mypy src

deps-dynamodb:
	@scripts/install-dynamodb-local.sh

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads browsers).
deps-browser:
	@scripts/install-chromium.sh

test: install deps-dynamodb deps-browser lint
	$(BIN)/python -m tests.support.suite $(PYTEST_ARGS)

bench: install
	@scripts/install-bench-tools.sh
	$(BIN)/python -m benchmarks.run

bench-store: install deps-dynamodb
	$(BIN)/python -m benchmarks.store_bench

bench-ticks: install
	$(BIN)/python -m benchmarks.tick_bench

bench-pages: install
	$(BIN)/python -m benchmarks.pages_bench

audit: install
	$(BIN)/cnop audit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
