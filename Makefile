# The two set-up commands are `make run` and `make test`; both install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: install run cloud test lint bench bench-store bench-scale bench-house bench-ticks bench-pages audit clean deps-dynamodb deps-browser web-assets \
  audit-deps sbom soak bench-durability deps-redis

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

# The cloud shape as processes on 127.0.0.1 (gateways on 8100 and 8101); Ctrl-C stops everything.
# With Redis (installed by deps-redis) for the shared state: prices, events, limits, caches.
cloud: install deps-dynamodb deps-redis
	$(BIN)/cnop dev cloud

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src
	$(BIN)/mypy src
	$(BIN)/lint-imports

deps-dynamodb:
	@scripts/install-dynamodb-local.sh

# Debian's redis-server for the shared-state tests (the suite starts its own on a free port).
deps-redis:
	@scripts/install-redis.sh

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads browsers).
deps-browser:
	@scripts/install-chromium.sh

test: install deps-dynamodb deps-redis deps-browser lint
	$(BIN)/python -m tests.support.suite $(PYTEST_ARGS)

bench: install
	@scripts/install-bench-tools.sh
	$(BIN)/python -m benchmarks.run

bench-store: install deps-dynamodb
	$(BIN)/python -m benchmarks.store_bench
	$(BIN)/python -m benchmarks.dynamodb_orders

bench-scale: install
	$(BIN)/python -m benchmarks.scale_bench

bench-house: install deps-dynamodb
	$(BIN)/python -m benchmarks.house_conflicts

bench-ticks: install
	$(BIN)/python -m benchmarks.tick_bench

# SQLite's synchronous modes (OFF / NORMAL / FULL): what each costs per commit.
bench-durability: install
	$(BIN)/python -m benchmarks.sqlite_durability

# A bounded soak (SOAK_SECONDS, default 300, at SOAK_RATE requests/s): RSS, fds and p99 must not grow.
soak: install
	$(BIN)/python -m benchmarks.soak

bench-pages: install
	$(BIN)/python -m benchmarks.pages_bench

audit: install
	$(BIN)/cnop audit

# Known vulnerabilities in the locked dependencies (needs the advisory service; exits 0 with a
# note when it cannot be reached). Not part of `make test`: a new advisory must not fail CI.
audit-deps: install
	$(BIN)/python scripts/audit_deps.py

# A CycloneDX SBOM of the installed environment, with the project as its root component.
sbom: install
	@mkdir -p build
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --of JSON --output-reproducible \
	  -o build/sbom.cdx.json $(BIN)/python
	@echo "SBOM written to build/sbom.cdx.json"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
