# Magistrate: the two commands a newcomer runs are `make demo` and `make test`.
# Both are idempotent: stamps record what is installed, so a second run installs nothing.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
WHEELHOUSE  := .wheelhouse
LLAMA_VER   := 0.3.36
LLAMA_WHEEL := $(WHEELHOUSE)/.built-llama-cpp-python-$(LLAMA_VER)
# Portable CPU flags: the default -march=native build crashes in llama.cpp's AMX matmul on
# some CPUs. The wheel is built once into a wheelhouse this Makefile owns, with pip's cache
# off (pip's wheel cache ignores CMAKE_ARGS and could hand back a native build).
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
STAMP_BASE  := $(VENV)/.stamp-base
STAMP_DEV   := $(VENV)/.stamp-dev
DATA_DIR    ?= ../shared/data

.PHONY: demo test lint bench safety clean

demo: $(STAMP_BASE)
	$(BIN)/magistrate model install
	$(BIN)/magistrate classify --policy spam --file examples/spam.jsonl

test: $(STAMP_DEV)
	$(BIN)/magistrate model install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	scripts/with-postgres $(BIN)/pytest -q

# The chat-model safety suites on a small sample, embedded model as subject and grader;
# add e.g. SAFETY_ARGS='--compare-system-prompt "..."' for a second column.
SAMPLE      ?= 3
safety: $(STAMP_BASE)
	$(BIN)/magistrate model install
	$(BIN)/magistrate safety run --data-dir $(DATA_DIR) --sample $(SAMPLE) $(SAFETY_ARGS)

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: $(STAMP_BASE)
	$(BIN)/python bench/prefix_reuse.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/modes.py
	scripts/with-postgres $(BIN)/python bench/store.py
	$(BIN)/python bench/concurrency.py
	$(BIN)/python bench/service.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(LLAMA_WHEEL): | $(BIN)/python
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
		--wheel-dir $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VER)
	touch $@

$(STAMP_BASE): pyproject.toml $(LLAMA_WHEEL) | $(BIN)/python
	$(BIN)/pip install --quiet --no-index --find-links $(WHEELHOUSE) --no-deps llama-cpp-python==$(LLAMA_VER)
	$(BIN)/pip install --quiet --find-links $(WHEELHOUSE) -e '.[embedded]'
	touch $@

$(STAMP_DEV): $(STAMP_BASE)
	$(BIN)/pip install --quiet --find-links $(WHEELHOUSE) -e '.[embedded,dev]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
