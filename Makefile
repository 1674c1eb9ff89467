# Two commands that work on a fresh machine:  make demo   and   make test
# Set TORCH_SPEC="" to keep a torch (e.g. a CUDA build) already present in $(VENV) or in PYTHON's environment.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dsmpnn demo --config configs/darcy_demo.yaml --out $(DEMO_DIR)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
