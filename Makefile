# Everything a fresh machine with Python 3.11+ needs: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults lint typecheck check dev clean browser bench bench-fleet

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "regionvault needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/regionvault demo

dev: $(STAMP)
	$(BIN)/regionvault dev

# The whole suite, with a representative subset of the fault cells (tests/faults); the full
# fault matrix is `make test-faults`.
test: $(STAMP) browser lint typecheck
	$(BIN)/pytest -m "not faults_extended"

# Every fault cell: each step x {whole worker killed, pool process killed, delivered twice},
# broker restarts with and without persistence, every store fault, spool loss at every boundary.
test-faults: $(STAMP)
	$(BIN)/pytest tests/faults

# Benchmarks, run by hand on a quiet machine (never by the suite): the chain against its bare
# tools (SIZE=0.5, 1 or 2 GB; a few minutes for 0.5), and 3 domains x 100 tiny sources.
SIZE ?= 0.5
bench: $(STAMP)
	$(BIN)/python bench/chain.py --size $(SIZE)

bench-fleet: $(STAMP)
	$(BIN)/python bench/fleet.py

# The browser tests (tests/browser) drive Debian's Chromium, never a browser of Playwright's.
browser:
	@test -x /usr/bin/chromium || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .rv-dev
