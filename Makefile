# The README's commands. Everything installs itself into .venv from the hashed lock file.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.PHONY: install run test lint format lock bench clean

$(BIN)/wallet: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/wallet

run: install  ## the service on the embedded PostgreSQL (or DATABASE_URL), port 3000
	$(BIN)/wallet serve --host $(HOST) --port $(PORT)

test: install  ## the whole suite against a real PostgreSQL
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock:  ## re-resolve requirements.lock after editing pyproject.toml (needs uv)
	uv pip compile pyproject.toml --group dev --generate-hashes --no-header \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
