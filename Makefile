# Set-up and entry points. Every target installs what it needs into .venv/ first.
#   make run                       the tiny default, end to end, on this machine's CPU/GPU/TPU
#   make run CONFIG=configs/llama8b.py WORKDIR=runs/llama8b ARGS='--config.model.hf_path=/ckpt'
#   make test                      lint + the test suite (CPU, fake 8-device mesh)
#   make test-quick                lint + the suite without the end-to-end runs marked slow
#   make bench                     benchmarks/ (forward, verifier, decode kernel, sampling vs
#                                  transformers, data, SFT step, eval, GRPO step: JSON + tables
#                                  under runs/bench; long on CPU)
#   make bench-accelerator         on a GPU/TPU: ceilings, decode kernel, 8B sampling, SFT MFU

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tiny.py
WORKDIR ?= runs/tiny
ARGS ?=
# test-only; a CPU build of this version is what parity tests are run with
TORCH ?= torch==2.13.0

.PHONY: run test test-quick lint bench bench-accelerator setup setup-test clean

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sftrl needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet "$(TORCH)" -e '.[test]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(PY) -m sftrl.main --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

test: $(VENV)/.installed-test lint
	$(PY) -m pytest -q $(ARGS)

test-quick: $(VENV)/.installed-test lint
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: $(VENV)/.installed-test
	$(PY) benchmarks/forward.py --out=runs/bench $(ARGS)
	$(PY) benchmarks/rewards.py --out=runs/bench
	$(PY) benchmarks/decode_attention.py --out=runs/bench
	$(PY) benchmarks/sampling.py --out=runs/bench
	$(PY) benchmarks/data.py --out=runs/bench/data.json
	$(PY) benchmarks/sft.py --out=runs/bench
	$(PY) benchmarks/eval.py --out=runs/bench
	$(PY) benchmarks/grpo.py --out=runs/bench

bench-accelerator: $(VENV)/.installed-test
	$(PY) benchmarks/accelerator.py --out=runs/bench $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
