# `make run` and `make test` bootstrap their own virtual environment. The pinned torch
# (TORCH_SPEC) is installed first, so the loose `torch>=2.4` in pyproject.toml is already
# satisfied and pip adds no other torch. Which build that is depends on pip's configuration:
# on this project's machines a local CPU wheel, on stock PyPI for Linux the CUDA build
# (docs/running.md#which-torch).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: run test install clean-results lint docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[workflow,gpu,export,docs,dev]"
	touch $@

install: $(STAMP)

# The default params run the offline digits study; paper scale (datasets + GPU):
#   make run SNAKEMAKE_ARGS="--config scale=paper"
# Plain `snakemake` from the root finds the Snakefile and its profile (profiles -> workflow/profiles).
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# The documentation into site/ (mkdocs.yml; strict: a broken link or a missing page fails).
# Preview with `$(BIN)/mkdocs serve`.
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

lint: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

clean-results:
	rm -rf results/runs results/jobs results/studies
