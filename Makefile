# rmflow — `make demo` sets everything up and runs the main job; `make test` runs the test suite (CI calls it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RMFLOW := $(VENV)/bin/rmflow
EXTRAS ?= test,qm9,dynamics,text2image,vectors

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	$(RMFLOW) compare ring-demo

clean:
	rm -rf $(VENV) runs .pytest_cache
