# Two commands: `make demo` serves a freshly generated project, `make test` runs every template test.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BUILD := build
UV := $(abspath $(BIN)/uv)

# The demo is the template's default answers, rendered by cookiecutter.
DEMO_DIR := $(BUILD)/demo
DEMO_PROJECT := $(DEMO_DIR)/realtime-service
DEMO_PACKAGE := realtime_service
DEMO_HOST := 127.0.0.1
DEMO_PORT := 8000

# Two workers; worksteal evens out combinations that take different times; -v names every
# combination in the output.
PYTEST_ARGS ?= -n 2 --dist worksteal -v

.PHONY: test demo clean

$(INSTALLED): requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

test: $(INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

demo: $(INSTALLED)
	rm -rf $(DEMO_DIR)
	$(BIN)/cookiecutter --no-input --output-dir $(DEMO_DIR) .
	cd $(DEMO_PROJECT) && $(UV) sync --python $(PYTHON)
	@echo "Serving the demo at http://$(DEMO_HOST):$(DEMO_PORT)/ (Ctrl+C stops it)"
	cd $(DEMO_PROJECT) && .venv/bin/python -m $(DEMO_PACKAGE) serve --host $(DEMO_HOST) --port $(DEMO_PORT)

clean:
	rm -rf $(BUILD) $(VENV)

# The benchmark (bench/run.py): renders the project with every feature on (auth=query_token, and
# a Redis variant), serves it and the two baselines in their own processes and drives them from
# client processes on loopback. Several minutes; writes build/bench/results.{json,md,png}.
# BENCH_ARGS="--runs 3" or "--quick" to shorten it. Before/after a change, side by side in one
# invocation (old = the template at a git revision, new = the working tree):
#   make bench BENCH_ARGS="--compare HEAD~3 --only F,L,S --runs 3"
BENCH_ARGS ?=

.PHONY: bench

bench: $(INSTALLED)
	$(BIN)/python bench/run.py --out $(BUILD)/bench $(BENCH_ARGS)
