# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and (re)install only when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/sample
RUNS   ?= runs/demo
export MPLBACKEND ?= Agg
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install browser demo test lab clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The whole workflow on the bundled offline sample data; every notebook runs headless.
demo: $(STAMP)
	$(BIN)/python -m workbench.demo --data $(DATA) --runs $(RUNS)

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The web page's test drives Debian's headless Chromium; install it (as root, or through sudo)
# only when it is missing.
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(RUNS) $(DATA) .pytest_cache
