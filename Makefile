# Two commands a user needs: `make demo` and `make test`. Each sets up .venv on first run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean bench bench-smoke

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,replicas]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genrecedit demo --run-dir runs/demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run_all.py --size full

bench-smoke: $(STAMP)
	$(PY) bench/run_all.py --size smoke

clean:
	rm -rf $(VENV) runs .cache
