# `make demo` and `make test` each set up everything they need in ./.venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Where a CPU torch wheel lies on this kind of machine; harmless where it does not exist.
WHEELS ?= /opt/wheels
PIP    := $(BIN)/pip install --disable-pip-version-check $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))
WORK   ?= work_dirs/demo

.PHONY: install test test-cuda demo benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt setup.py selfsup/compat/torchvision_ops.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "setuptools>=69" wheel
	# torch first and alone, so nothing else can pull in a different build.
	$(PIP) torch==2.13.0
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps --no-build-isolation -e .
	$(BIN)/python -m selfsup.compat.torchvision_ops install
	$(BIN)/python -c "import timm, torchvision, gsplat, nerfacc, nuscenes, fiddle, transformers; print('install ok')"
	touch $@

test: install
	$(BIN)/python -m pytest -q tests

# On a CUDA machine: the tests that compare CUDA kernels with their PyTorch twins.
test-cuda: install
	$(BIN)/python -m pytest -q -m requires_cuda tests

demo: install
	$(BIN)/python scripts/demo.py --work-dir $(WORK)

benchmark: install
	$(BIN)/python scripts/benchmark.py all --json-out $(WORK)/benchmark.json

clean:
	rm -rf $(VENV) work_dirs build *.egg-info
