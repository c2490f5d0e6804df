# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv; torch is pinned to the CPU build (2.13.0).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test system lint bench-quality clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian packages: Fashion-MNIST's IDX files (tests skip fashion-mnist checks without them)
# and chromium, the headless browser of tests/test_browser.py (which fails without it).
system:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: install the Debian package dataset-fashion-mnist for fashion-mnist"; fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: install the Debian package chromium for the browser tests"; fi; \
	fi

demo: $(STAMP)
	$(VENV)/bin/lookalike demo --out demo-out

test: $(STAMP) system
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

clean:
	rm -rf $(VENV) demo-out
