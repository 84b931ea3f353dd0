# Quick start: `make run` runs the gateway, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# The tests mostly wait (on timeouts, retries, worker recovery): test files run side by side.
PYTEST_PROCESSES ?= 4
# The locks: requirements.txt is what a production install (Heroku's buildpack, Render, Railway, Dokku) pulls;
# requirements-dev.txt adds the tests and the local sandbox, at the same versions. `make lock` writes both.
LOCK := requirements.txt
DEV_LOCK := requirements-dev.txt
LOCK_OPTIONS := --universal --python-version 3.11 --custom-compile-command "make lock" --quiet

.PHONY: run test lint lock clean

# Installs the exact versions of the dev lock (the project itself editable), so the tests run on the locked versions.
$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r $(DEV_LOCK)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sms-gateway run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n $(PYTEST_PROCESSES) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# After a change to pyproject.toml's dependencies (needs PyPI): re-resolve with uv, keeping every pin that still fits
# (uv reads the old file as its preferences); `make lock UPGRADE=--upgrade` moves every pin to the newest release.
# The dev lock is held to the production pins (-c), so both files name the same version of a shared package.
lock:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv
	printf '.\n' | $(VENV)/bin/uv pip compile - $(LOCK_OPTIONS) $(UPGRADE) -o $(LOCK)
	grep -vx '\.' $(LOCK) > $(VENV)/production-pins.txt
	printf -- '-e .[test]\n' | $(VENV)/bin/uv pip compile - -c $(VENV)/production-pins.txt $(LOCK_OPTIONS) $(UPGRADE) \
		-o $(DEV_LOCK)

clean:
	rm -rf $(VENV) var .pytest_cache
