# edgecam: `make demo` replays the bundled clip through the whole pipeline; `make test` runs the tests.
# Both set themselves up on a fresh machine: a virtual environment in .venv with edgecam installed
# editable (and, for the tests, mosquitto from apt when it is missing and we are root).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgecam-installed
TRAIN_STAMP := $(VENV)/.edgecam-train-installed
CLIP := edgecam/data/corridor.mp4
# The demo runs the recognizer too once it is shipped (deploy/configs/demo.yaml names it).
DEMO_CONFIG := $(if $(wildcard edgecam/models/face_recognizer/model.json),--config deploy/configs/demo.yaml,)
PYTEST_ARGS ?=

.PHONY: demo test setup setup-train mosquitto lint clean

demo: setup
	$(BIN)/edgecam replay $(CLIP) --speed max $(DEMO_CONFIG)

test: setup-train mosquitto
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

setup: $(STAMP)

# The tests also run the training code (a few iterations): torch (CPU build), onnx, tqdm.
setup-train: $(TRAIN_STAMP)

$(TRAIN_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	touch $(TRAIN_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; \
	else \
		echo "mosquitto is not installed: run 'sudo apt-get install -y mosquitto' (the MQTT tests start their own broker)" >&2; \
		exit 1; \
	fi

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(STAMP) $(TRAIN_STAMP)
