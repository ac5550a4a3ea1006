# `make run` and `make test` set up .venv on first use (pinned installs from requirements.lock),
# then run. Telemetry of every library is off.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CATALOG ?= ../shared/datasets/fashion-product-images-small
PROFILE ?= default
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run index test setup browser compile clean

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/item run --catalog $(CATALOG) --profile $(PROFILE)

index: setup
	$(BIN)/item index --catalog $(CATALOG)

compile: setup
	$(BIN)/item compile --output build/training_pipeline.yaml

# headless Chromium for `item gate screenshot` and its test (Debian's package; root or sudo)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: setup browser
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build runs .pytest_cache
