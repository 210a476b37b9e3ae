# Two commands for a new user on a fresh machine:
#   make demo   set up, then analyse two real clips of the public POCUS dataset with the bundled model
#   make test   set up, then run the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: the CPU build of 2.13.0 installs from a local file; asking for it later lets pip
# resolve `torch` on its own and pull a CUDA build (see DEVELOPERS.md).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# two real clips of the public POCUS dataset (CC BY 4.0, src/pocovid/assets/demo/ATTRIBUTION.md), never
# shipped: read from the dataset when it lies beside the checkout (DEMO_DATA, default ../shared/data/pocus),
# else `pocovid demo` takes its download cache or downloads them (checked by SHA-256); offline with no copy
# it analyses a synthetic phantom and says so. The bundled model saw both clips in training, and it says so.
DEMO_DATA ?= ../shared/data/pocus
demo: setup
	$(BIN)/pocovid demo --out demo/analysis $(if $(wildcard $(DEMO_DATA)/pocus_videos),--data $(DEMO_DATA))

# Browser tests drive Debian's chromium through Playwright (never a Playwright browser download);
# installed when missing and apt-get is available, else tests/test_browser.py skips with the reason.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: tests/test_browser.py will skip"

# lint first (seconds): ruff's settings are in pyproject.toml. The tests run in one process per core
# (pytest-xdist; at most 4: each analysis uses 2 threads): on 2 AVX2 cores 413 s against 669 s in one
TEST_WORKERS ?= auto
test: setup chromium
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4

bench: setup
	$(BIN)/python benchmarks/decode.py ../shared/data/pocus

clean:
	rm -rf $(VENV) demo
