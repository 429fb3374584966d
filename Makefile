VENV ?= .venv
STAMP := $(VENV)/.kdhub-setup

.PHONY: setup demo test test-all lint typecheck docs

$(STAMP): pyproject.toml examples/plugin-template/pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdhub demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/python -m kdhub_methods._table > docs/methods.md
	$(VENV)/bin/python -m kdhub.registry.reference config > docs/config.md
	$(VENV)/bin/python -m kdhub.registry.reference policies docs/policies.md
