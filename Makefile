# edgecam: `make demo` replays the bundled clip through the whole pipeline; `make test` runs the tests.
# Both set themselves up on a fresh machine: a virtual environment in .venv with edgecam installed
# editable (and, for the tests, mosquitto from apt when it is missing and we are root). Installs are pinned by
# constraints/python<X.Y>.txt (what pip resolved on that Python when `make lock` last ran); `make lock`
# re-resolves on purpose in a scratch venv and rewrites the file for this Python.

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
PYVER := $(shell $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK := constraints/python$(PYVER).txt
PIN = $(if $(wildcard $(LOCK)),--constraint $(LOCK),)
LOCK_VENV := .venv-lock

.PHONY: demo test test-fast detector recognizer recognizer-pairs orl setup setup-train mosquitto lint lock clean

demo: setup
	$(BIN)/edgecam replay $(CLIP) --speed max $(DEMO_CONFIG)

test: setup-train mosquitto
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The tier to run while iterating (a couple of minutes on 2 cores): unit tests, the CLI contracts, the publisher
# against a broker. Left out: tests marked slow (training runs, replays of whole clips, process kills), those
# needing ../shared, and whole-system modules (the fault suite, the soak, bad-input corpus, bench, enroll/identify
# with the shipped models, the annotated video, the installer, model compression). `make test` runs all of it.
FAST_SKIP := tests/reliability tests/badinput tests/test_bench.py tests/test_compress.py tests/test_deploy.py \
	tests/test_enroll.py tests/test_recognize_models.py tests/test_show.py tests/test_mqtt_replay.py \
	tests/test_train_detector.py

test-fast: setup-train mosquitto
	$(BIN)/python -m pytest -q -m "not slow and not shared" $(addprefix --ignore=,$(FAST_SKIP)) $(PYTEST_ARGS)

# Rebuild a shipped model from its run config (needs ../shared data; hours on a CPU, see each config's header).
# Flags go through ARGS, e.g. `make recognizer ARGS="--from prune --device cuda"`, `make orl ARGS="--seed 1"`.
ARGS ?=
recognizer: setup-train
	$(BIN)/python -m training.recognizer.chain --config training/recognizer/configs/recognizer.yaml $(ARGS)

# The shipped recognizer since stop 10: the stop-9 file (recognizer's chain) distilled on 3x the faces as the shipped
# detector crops them (training/recognizer/configs/pairs.yaml; ~3 h on 2 cores).
RECOGNIZER_STOP9 := 5d4fedb
recognizer-pairs: setup-train
	mkdir -p runs/recognizer
	[ -f runs/recognizer/stop9.onnx ] || git show $(RECOGNIZER_STOP9):edgecam/models/face_recognizer/face_recognizer.onnx > runs/recognizer/stop9.onnx
	$(BIN)/python -m training.fetched --set celeba --set utkface
	$(BIN)/python -m training.recognizer.chain --config training/recognizer/configs/pairs.yaml $(ARGS)

# The detector: stage the fetched scene/portrait sets (needs their snapshots from the fetch tool), label them with
# YuNet, fine-tune the m3 detector (taken from git history) with wild.yaml, wild2.yaml and wild4.yaml, mine hard
# negatives with wild4, then wild5.yaml and wild6.yaml; label the portrait sets' turned faces, then wild13b.yaml
# and wild13c.yaml, export (~6 h on 2 cores).
M3_COMMIT := 42157e7
detector: setup-train
	mkdir -p runs/detector
	[ -f runs/detector/m3.onnx ] || git show $(M3_COMMIT):edgecam/models/face_detector/face_detector.onnx > runs/detector/m3.onnx
	$(BIN)/python -m training.fetched --set worksite --set voc_shwd --set coco128_person --set rwmfd --set utkface
	PYTHON=$(BIN)/python bash training/detector/configs/label_wild.sh
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild.yaml $(ARGS)
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild2.yaml $(ARGS)
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild4.yaml $(ARGS)
	$(BIN)/python -m training.detector.export runs/detector/wild4/ckpt.pt --out runs/detector/wild4/model
	$(BIN)/python -m training.detector.hardneg --model runs/detector/wild4/model --out runs/detector/labels/hardneg.json \
		runs/detector/labels/worksite.json runs/detector/labels/voc_shwd.json \
		runs/detector/labels/coco128_person.json runs/detector/labels/rwmfd.json
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild5.yaml $(ARGS)
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild6.yaml $(ARGS)
	$(BIN)/python -m training.fetched --set celeba --set liveportrait
	PYTHON=$(BIN)/python bash training/detector/configs/label_turned.sh
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild13b.yaml $(ARGS)
	$(BIN)/python -m training.detector.train --config training/detector/configs/wild13c.yaml $(ARGS)
	$(BIN)/python -m training.detector.export runs/detector/wild13c/ckpt.pt

orl: setup-train
	$(BIN)/python -m training.recognizer.orl --config training/recognizer/configs/orl.yaml $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

setup: $(STAMP)

# The tests also run the training code (a few iterations): torch (CPU build), onnx, tqdm.
setup-train: $(TRAIN_STAMP)

$(TRAIN_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet $(PIN) -e '.[dev,train]'
	touch $(TRAIN_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(wildcard $(LOCK)) | $(BIN)/python
	@[ -n "$(PIN)" ] || echo "no $(LOCK) for Python $(PYVER): installing unpinned versions ('make lock' pins them)" >&2
	$(BIN)/python -m pip install --quiet --upgrade $(PIN) pip
	$(BIN)/python -m pip install --quiet $(PIN) -e '.[dev]'
	touch $(STAMP)

# Re-resolve every dependency (runtime, dev, train) in a scratch venv and pin what pip picks today. Run it on
# purpose, then `make test`, and commit the new constraints file with the figures that changed.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,train]'
	mkdir -p constraints
	{ echo "# Pinned by 'make lock' on $$(date -u +%Y-%m-%d) with Python $(PYVER) ($$(uname -m)): every package pip"; \
	  echo "# resolved for edgecam[dev,train]. make setup / make test install with it; local version labels"; \
	  echo "# (+cpu) are dropped so the pins match the wheels of any index."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^#' | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK); 'make test' installs with it"

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
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(LOCK_VENV) $(STAMP) $(TRAIN_STAMP)
