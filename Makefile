# One entry point for everything a developer or CI does. `make install` needs
# only Python 3.11 on the machine; every other target installs what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# What running needs, then the developer's tools on top: `make run` waits for the first only.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-dev
# The locks both come from (`make lock`): every machine installs the same versions.
RUNTIME_LOCK := requirements/runtime.txt
DEV_LOCK := requirements/dev.txt
FUZZ_STAMP := $(VENV)/.installed-fuzz
FUZZ_SECONDS ?= 60
PROTO_FILES := $(wildcard protos/imageservice/v1/*.proto)

.DEFAULT_GOAL := help
.PHONY: help install lock hooks engines examples protos check-protos docs lint fmt test fuzz bench soak run dev stop clean

help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(RUNTIME): pyproject.toml $(RUNTIME_LOCK)
	@echo "installing the runtime dependencies into $(VENV) (first run only, about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(RUNTIME_LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(STAMP): $(RUNTIME) $(DEV_LOCK)
	@echo "installing the development tools into $(VENV) (first time only, about a minute)"
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	touch $@

install: $(STAMP)  ## create .venv and install the project with its dev tools, at the locked versions

lock: $(STAMP)  ## re-resolve requirements/*.txt from pyproject.toml (PyPI; keeps every pin that still fits)
	$(BIN)/python requirements/lock.py

hooks: $(STAMP)  ## install the commit hooks (.pre-commit-config.yaml: ruff, mypy, buf lint, fresh gen/ and lock)
	$(BIN)/pre-commit install

protos: $(STAMP)  ## regenerate gen/ from protos/ (never edit gen/ by hand)
	rm -rf gen/imageservice
	mkdir -p gen/imageservice/v1
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=gen --grpc_python_out=gen \
		--mypy_out=gen --mypy_grpc_out=gen \
		$(PROTO_FILES)
	touch gen/imageservice/__init__.py gen/imageservice/v1/__init__.py gen/imageservice/py.typed

# Compared with git's index, not the last commit, so the commit hook can run it too.
check-protos: protos  ## fail when the committed gen/ differs from what `make protos` makes
	git diff --exit-code --stat -- gen
	test -z "$$(git ls-files --others --exclude-standard -- gen)"

docs: $(RUNTIME)  ## rewrite docs/http.md's table of transformation parameters from the operations' declarations
	$(BIN)/python -m processor.parameters docs/http.md

lint: $(STAMP)  ## ruff, mypy, buf lint, and the lock made from this pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint protos
	$(BIN)/python requirements/lock.py --check

fmt: $(STAMP)  ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

engines:  ## make sure the PostgreSQL and Redis the tests use answer, and chromium and node are there (installs/starts them as root)
	bash .ci/engines

examples: engines  ## install the examples' own dependencies (examples/node: npm ci, from the npm registry)
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error

test: $(STAMP) engines examples  ## the whole test suite (against real PostgreSQL, Redis and a moto S3)
	$(BIN)/pytest

$(FUZZ_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,fuzz]'
	touch $@

fuzz: $(FUZZ_STAMP)  ## atheris on upload validation, then on the query parser, FUZZ_SECONDS (60) each; not in CI (docs/testing.md)
	$(BIN)/python -m fuzz uploads -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=3072
	$(BIN)/python -m fuzz queries -max_total_time=$(FUZZ_SECONDS)

bench: $(STAMP) engines  ## benchmarks, printed as ratios to a baseline measured in the same run, charted into docs/bench (storage and volume need the engines)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk; } || true
	$(BIN)/python -m bench --charts docs/bench

soak: $(STAMP)  ## 20k mixed requests at 32 at a time (SOAK_REQUESTS to change); fails on a 5xx or a service whose memory grows (not in CI; a few minutes)
	$(BIN)/python -m bench.soak

run: $(RUNTIME)  ## start cache, processor and gateway on embedded defaults (data in ./data); Ctrl-C stops all
	$(BIN)/python -m launcher

dev: $(RUNTIME)  ## the same, restarting a service when its code changes
	$(BIN)/python -m launcher --reload

stop:  ## stop what `make run` started (from another terminal; the same IMAGESVC_DATA_DIR, if any)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m launcher stop; else echo "not running"; fi

clean: stop  ## stop, then remove the venv, data and caches
	rm -rf $(VENV) data examples/node/node_modules .mypy_cache .ruff_cache .pytest_cache build *.egg-info .bench-* .fuzz .hypothesis
