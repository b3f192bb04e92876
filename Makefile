# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and (re)install only when pyproject.toml changed.
# On a GPU machine add the extra of the backend, e.g. `KERAS_BACKEND=jax make demo EXTRAS=gpu-jax`
# (or EXTRAS=gpu-tf; several comma-separated).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?=
comma  := ,
STAMP  := $(VENV)/.installed$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
DATA   ?= data/sample
RUNS   ?= runs/demo
export MPLBACKEND ?= Agg
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install browser demo test docs lab clean gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test$(addprefix $(comma),$(EXTRAS))]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The whole workflow on the bundled offline sample data; every notebook runs headless.
demo: $(STAMP)
	$(BIN)/python -m workbench.demo --data $(DATA) --runs $(RUNS)

# make test builds the documentation site too (tests/test_docs.py), so it installs the docs extra
# beside the extras asked for.
DOCS_EXTRAS := docs$(if $(EXTRAS),$(comma)$(EXTRAS))

# The suite runs over every core (pytest-xdist; TEST_WORKERS=0 runs it in this one process) and
# lists its 15 slowest tests at the end.
TEST_WORKERS ?= auto

test: browser
	$(MAKE) install EXTRAS=$(DOCS_EXTRAS)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

# The documentation site (mkdocs.yml, docs/) into site/, every warning an error. After
# `make demo` the notebooks' pages show the executed copies in runs/demo/notebooks.
docs:
	$(MAKE) install EXTRAS=$(DOCS_EXTRAS)
	$(BIN)/mkdocs build --strict

# The web page's test drives Debian's headless Chromium; install it (as root, or through sudo)
# only when it is missing.
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null)

# Wheels and weights the GPU check carries to a machine without network (benchmarks/gpu/README.md).
gpu-wheels: $(STAMP)
	PYTHON=$(BIN)/python benchmarks/gpu/wheels.sh build/gpu-wheels

# JupyterLab at the repository root, so that runs/ and data/ are in its file browser; as root
# (a container) it needs --allow-root.
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=. $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf $(RUNS) $(DATA) .pytest_cache site
