# latent_flow: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,fid,emoji]'
	touch $(STAMP)

install: $(STAMP) ## create the virtual environment and install latent-flow with its dev extras

train: $(STAMP) ## run the default experiment (the quick start on `shapes`); extra Hydra overrides via ARGS="..."
	$(PY) -m latent_flow.train $(ARGS)

test: $(STAMP) ## run the default test suite (no slow / gpu tests) in TEST_WORKERS processes (pytest-xdist, one file each)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

lint: $(STAMP) ## ruff: lint and format check (ruff format . fixes the format)
	$(PY) -m ruff check src tests benchmarks experiments
	$(PY) -m ruff format --check src tests benchmarks experiments

test-slow: $(STAMP) ## run the slow tests too
	$(PY) -m pytest -q -m "slow and not gpu" $(ARGS)

clean: ## remove run outputs (keeps the venv and the caches)
	rm -rf outputs multirun

.PHONY: help install train test lint test-slow clean
