# The two commands of the README:
#   make run    set up .venv, run the workflow on the embedded default, render results/report.html
#   make test   set up .venv, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup setup-test run papers domains test lint bench docs clean

# The run needs only the runtime requirements; the tests add their oracles (grad-cam, captum, ...).
$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

setup: $(STAMP)

setup-test: $(TEST_STAMP)

run: setup
	$(VENV)/bin/snakemake --cores all
	$(VENV)/bin/snakemake --report results/report.html

# The seed papers' figure and table types on the default config, in the report too.
papers: setup
	$(VENV)/bin/snakemake --cores all all paper_figures
	$(VENV)/bin/snakemake all paper_figures --report results/report.html

# Every seed domain on stand-ins in the real formats (CIFAR-10, CIFAKE, MosMed + DICOM CT in 3D, BraTS, street).
domains: setup
	$(VENV)/bin/snakemake --cores all all paper_figures --configfile config/domains.yaml
	$(VENV)/bin/snakemake all paper_figures --configfile config/domains.yaml --report results/report.html

test: setup-test
	$(PY) -m pytest -q

# ruff (pyproject [tool.ruff]: pyflakes, pycodestyle, import order; 120 columns) and Snakemake's linter.
lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakemake --lint

bench: setup
	$(PY) benchmarks/cam_engine.py

# docs/configuration.md from config/schema.yaml and the registries (tests/test_docs.py checks it is current).
docs: setup
	$(PY) -m cambench.configdoc

clean:
	rm -rf results resources .snakemake
