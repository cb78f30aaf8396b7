# The front door. `make run` brings the whole bridge up; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Two installs in one venv: `make run` needs only the runtime pins (requirements.lock);
# `make test` and `make lint` add the dev tools (requirements-dev.lock) on top. Each has
# its stamp, so neither reinstalls what the other already did.
VENV_STAMP := $(VENV)/.created
STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PROTO_SRC := $(shell find protos -name '*.proto')
PROTO_STAMP := bridge/.generated

.PHONY: run run-clean test lint protos bench lock clean venv kommo-webhook n8n-check mutants

venv: $(STAMP)

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $(VENV_STAMP)

$(STAMP): requirements.lock $(VENV_STAMP)
	$(PY) -m pip install --quiet -r requirements.lock
	touch $(STAMP)

$(DEV_STAMP): requirements-dev.lock $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.lock
	touch $(DEV_STAMP)

# Generated code is built, not committed: one package `bridge.*` with .pyi stubs.
protos: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	$(PY) -m devstack.protos
	touch $(PROTO_STAMP)

# State (Redis data, API key, webhook secret, ports) is kept in .run/ between runs.
# `make run ARGS=--clean` or `make run-clean` forgets it first.
run: $(PROTO_STAMP)
	$(PY) -m devstack $(ARGS)

run-clean: $(PROTO_STAMP)
	$(PY) -m devstack --clean $(ARGS)

test: $(PROTO_STAMP) $(DEV_STAMP)
	$(PY) -m pytest

# One-line mutations of the code that carries a guarantee, each of which the tests it names
# must catch (tests/README.md): not part of `make test` (minutes, not seconds). Run on a
# copy of the project, never on this tree. ARGS: mutation names, --list, --baseline, -v.
mutants: $(PROTO_STAMP) $(DEV_STAMP)
	$(PY) tests/mutants/run.py $(ARGS)

lint: $(PROTO_STAMP) $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: $(PROTO_STAMP) $(DEV_STAMP)
	bench/run.sh

# The shipped n8n workflow in a real n8n (installs n8n once into .n8n-check/): not part
# of `make test`. See examples/n8n/README.md.
n8n-check: $(PROTO_STAMP)
	$(PY) -m devstack.n8n_check

# Subscribe the running bridge's webhook URL in the connected Kommo account.
kommo-webhook: $(STAMP)
	$(PY) -m devstack.kommo_webhook

# Re-resolve the pins of pyproject.toml: requirements.lock (dependencies + the `run`
# extra), then requirements-dev.lock (the `dev` extra, held to the runtime pins, which it
# includes with -r).
LOCK_PY := .lockvenv/bin/python
EXTRAS = $(LOCK_PY) -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] if sys.argv[1] == "-" else p["optional-dependencies"][sys.argv[1]]))'
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	$(LOCK_PY) -m pip install --quiet --upgrade pip
	{ $(EXTRAS) - && $(EXTRAS) run; } > .lockvenv/runtime.txt
	$(LOCK_PY) -m pip install --quiet -r .lockvenv/runtime.txt
	$(LOCK_PY) -m pip freeze --exclude pip > .lockvenv/runtime.lock
	$(EXTRAS) dev > .lockvenv/dev.txt
	$(LOCK_PY) -m pip install --quiet -r .lockvenv/dev.txt -c .lockvenv/runtime.lock
	$(LOCK_PY) -m pip freeze --exclude pip > .lockvenv/all.lock
	{ echo "# \`make run\`: the pins of pyproject.toml's dependencies and its \`run\` extra, and every"; \
	  echo "# package they pull in. Written by \`make lock\`; never edited by hand."; \
	  cat .lockvenv/runtime.lock; } > requirements.lock
	{ echo "# \`make test\`, \`make lint\`: the runtime pins plus the \`dev\` extra's packages and every"; \
	  echo "# package they pull in. Written by \`make lock\`; never edited by hand."; \
	  echo "-r requirements.lock"; \
	  grep -vxF -f .lockvenv/runtime.lock .lockvenv/all.lock; } > requirements-dev.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) bridge .mypy_cache .ruff_cache
