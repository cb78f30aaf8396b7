# The front door. `make run` brings the whole bridge up; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
PROTO_STAMP := bridge/.generated

.PHONY: run test lint protos bench lock clean venv kommo-webhook

venv: $(STAMP)

$(STAMP): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	touch $(STAMP)

# Generated code is built, not committed: one package `bridge.*` with .pyi stubs.
protos: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	$(PY) -m devstack.protos
	touch $(PROTO_STAMP)

run: $(PROTO_STAMP)
	$(PY) -m devstack

test: $(PROTO_STAMP)
	$(PY) -m pytest

lint: $(PROTO_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: $(PROTO_STAMP)
	bench/run.sh

# Subscribe the running bridge's webhook URL in the connected Kommo account.
kommo-webhook: $(STAMP)
	$(PY) -m devstack.kommo_webhook

# Re-resolve the pins of pyproject.toml into requirements.lock.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet --upgrade pip
	.lockvenv/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > .lockvenv/direct.txt
	.lockvenv/bin/pip install --quiet -r .lockvenv/direct.txt
	.lockvenv/bin/pip freeze > requirements.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) bridge .mypy_cache .ruff_cache
