# camlabel: the two commands of the README are `make demo` and `make test`.
# Everything they need (both virtual environments, Debian's Chromium for the browser
# tests) is installed here, idempotently; nothing is a manual step.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
LS_VERSION := 1.23.2
EXTRAS ?= dev,sagemaker
PIP_FLAGS ?= -q --disable-pip-version-check
DEMO_WS ?= demo-workspace

.PHONY: all demo test test-fast lint typecheck venv ls-server chromium postgresql clean bench

all: test

$(VENV)/.installed: pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "camlabel needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

# The Label Studio server lives in its own venv (~1 GB with Django); camlabel itself
# only depends on label-studio-sdk.
$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(LS_VENV)/bin/pip install $(PIP_FLAGS) label-studio==$(LS_VERSION)
	touch $@

ls-server: $(LS_VENV)/.installed

# Debian's Chromium for the Playwright browser tests (Playwright's own browser download
# does not work offline). Needs root or sudo; skipped when already present.
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null | head -1)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium missing and no root: browser tests will be skipped (install Debian's chromium)"; fi

# Debian's PostgreSQL for the tests of `labelstudio start --database` (they start their own
# cluster in a temp dir; the system service is not used). Debian puts initdb in
# /usr/lib/postgresql/<version>/bin, which the tests search. Needs root or sudo.
postgresql:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo "postgresql: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "postgresql missing and no root: the PostgreSQL tests will be skipped (install Debian's postgresql)"; fi

demo: venv ls-server
	CAMLABEL_PROGRESS=1 $(VENV)/bin/camlabel demo -w $(DEMO_WS)

test: venv ls-server chromium postgresql
	$(VENV)/bin/python -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

test-fast: venv
	$(VENV)/bin/python -m pytest tests/unit -p no:cacheprovider -x $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check camlabel tests benchmarks training
	$(VENV)/bin/ruff format --check camlabel tests benchmarks training

typecheck: venv
	$(VENV)/bin/mypy camlabel

bench: venv ls-server
	$(VENV)/bin/python benchmarks/geometry.py
	$(VENV)/bin/python benchmarks/gradcam.py --images 64
	$(VENV)/bin/python benchmarks/labelstudio.py

clean:
	rm -rf $(VENV) $(LS_VENV) $(DEMO_WS) test-artifacts build *.egg-info
