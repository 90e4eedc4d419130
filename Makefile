# Every target does its own set-up: a virtualenv in .venv with scalekit and its dev tools.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_ARGS ?=
# Tests wait on sockets far more than on the CPU: more workers than cores pays off.
PYTEST_WORKERS ?= 4

.PHONY: help demo test test-no-extras test-newest lint docs bench services services-down clean

help:
	@echo "make demo   run examples/quickstart.py (real services when reachable, in-memory otherwise)"
	@echo "make test   bring up the test services and run the whole suite"
	@echo "make lint   ruff (lint + format check) and mypy --strict"
	@echo "make docs   build the documentation site (mkdocs --strict)"
	@echo "make bench  run every benchmark against its peers"

$(STAMP): pyproject.toml setup.py src/scalekit/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off --upgrade pip
	rm -f src/scalekit/_speedups*.so  # a failed (optional) build must not leave an old one
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[all,dev]"
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[all,dev,bench]"
	touch $@

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

test: $(STAMP) services
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The pure-logic suite in an environment without redis, asyncpg or aio-pika installed, and
# without the C accelerator: the minimal install, where every pure-Python fallback runs.
test-no-extras:
	$(PYTHON) -m venv $(VENV)-noextras
	$(VENV)-noextras/bin/python -m pip install --quiet --progress-bar off --upgrade pip
	$(VENV)-noextras/bin/python -m pip install --quiet --progress-bar off -e ".[dev]"
	SCALEKIT_REQUIRE_SERVICES= SCALEKIT_NO_EXTRAS=1 SCALEKIT_NO_EXTENSIONS=1 \
		$(VENV)-noextras/bin/python -m pytest \
		-n $(PYTEST_WORKERS) -p no:cacheprovider $(PYTEST_ARGS)

# The whole suite again on the newest Python scalekit supports (pyproject's classifiers),
# in its own virtualenv: asyncio changes between versions (3.12's Server.wait_closed() hung
# FaultProxy) show up here, not in users' hands.
NEWEST ?= 3.13
test-newest: services
	$$(scripts/find-python.sh $(NEWEST)) -m venv $(VENV)-newest
	$(VENV)-newest/bin/python -m pip install --quiet --progress-bar off --upgrade pip
	$(VENV)-newest/bin/python -m pip install --quiet --progress-bar off -e ".[all,dev]"
	$(VENV)-newest/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup \
		-p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples docs/examples
	$(BIN)/ruff format --check src tests benchmarks examples docs/examples
	$(BIN)/mypy --strict src

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(BENCH_STAMP) services
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV)-noextras $(VENV)-newest site .pytest_cache .mypy_cache .ruff_cache build
	find src -name '*.so' -delete
