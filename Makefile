# rpnet-pl: one-command pipelines. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RPNET := $(VENV)/bin/rpnet
STAMP := $(VENV)/.installed
SYNTH ?= data/synthetic-voc

.PHONY: help install demo test synth clean-venv

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# The stamp is rebuilt only when the pins or the package metadata change: re-running is a no-op.
$(STAMP): requirements.txt setup.cfg setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with pinned versions (no-op when up to date)

synth: $(STAMP)  ## generate the synthetic VOC dataset in $(SYNTH) and check it
	$(RPNET) data synth --out $(SYNTH)
	$(RPNET) data check $(SYNTH) --dataset voc

demo: synth  ## the main job on the embedded synthetic dataset

test: $(STAMP)  ## run the test suite (< 10 min on 2 cores)
	OMP_NUM_THREADS=2 WANDB_MODE=offline $(PY) -m pytest -q tests

clean-venv:  ## remove the virtual environment
	rm -rf $(VENV)
