# Quick start: `make run` (set up, then the main job) and `make test` (set up, then the tests).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml

.PHONY: setup run lint format test summary benchmark benchmark-torch clean

$(STAMP): $(SOURCES)
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[torch,dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m smallbig_jax synthetic --out data/synthetic --if_missing
	$(VENV)/bin/python -m smallbig_jax train --config configs/synthetic_smallbig.py --workdir workdirs/synthetic

# Two pytest workers: most of the suite is single-threaded XLA compilation, so two run side by side on 2 cores.
TEST_WORKERS ?= 2

# Style first (a second or two): ruff's lint rules and formatting, configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

summary: $(STAMP)
	$(VENV)/bin/python -m smallbig_jax summary

benchmark: $(STAMP)
	$(VENV)/bin/python -m smallbig_jax benchmark

benchmark-torch: $(STAMP)
	$(VENV)/bin/python -m smallbig_jax benchmark --compare_torch

clean:
	rm -rf $(VENV) *.egg-info
