# Quick start: `make run` runs the gateway, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# The tests mostly wait (on timeouts, retries, worker recovery): test files run side by side.
PYTEST_PROCESSES ?= 4

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sms-gateway run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n $(PYTEST_PROCESSES) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
