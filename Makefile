# Two commands that work on a fresh machine:  make demo   and   make test
# make smoke: a plain non-editable install (sdist -> wheel, no extras) into a fresh venv, and a run from it.
# torch is installed first, pinned (a CPU wheel here). To use a CUDA torch you already have instead:
#   make test TORCH_SPEC= VENV_FLAGS=--system-site-packages      (torch from PYTHON's environment)
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: demo test smoke install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/dsmpnn generate darcy --n 120 --resolution 32 --seed 0 --out $(DEMO_DIR)/data
	$(VENV)/bin/dsmpnn train --config configs/darcy_demo.yaml --data $(DEMO_DIR)/data --out $(DEMO_DIR)/run
	$(VENV)/bin/dsmpnn evaluate $(DEMO_DIR)/run --split test
	@echo "plots: $(DEMO_DIR)/run/plots/  metrics: $(DEMO_DIR)/run/metrics.json"

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

smoke:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" VENV_FLAGS="$(VENV_FLAGS)" .ci/smoke.sh

clean:
	rm -rf $(VENV) $(DEMO_DIR)
