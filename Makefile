# Two commands for a new user on a fresh machine:
#   make demo   set up, then run the main job on generated demo data
#   make test   set up, then run the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

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

demo: setup
	$(BIN)/pocovid phantom dataset demo/dataset
	$(BIN)/pocovid data index demo/dataset --out demo/index.csv
	$(BIN)/pocovid data split demo/dataset --folds 3 --out demo/splits.json
	$(BIN)/pocovid data check-split demo/splits.json

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/decode.py ../shared/data/pocus

clean:
	rm -rf $(VENV) demo
