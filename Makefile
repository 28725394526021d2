# Everything a fresh machine with Python 3.11+ needs: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults lint typecheck check dev clean browser servers bench bench-fleet dashboard-picture

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "regionvault needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP) servers
	$(BIN)/regionvault demo

dev: $(STAMP) servers
	$(BIN)/regionvault dev

# The whole suite, with a representative subset of the fault cells (tests/faults); the full
# fault matrix is `make test-faults`.
test: $(STAMP) browser servers lint typecheck
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

# The README's picture of the Grafana dashboard's panels (docs/dashboard.png): a demo workload on
# the embedded stack, its workers' metrics scraped and plotted with matplotlib (a few minutes).
dashboard-picture: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,docs]'
	$(BIN)/python deploy/grafana/render_preview.py --out docs/dashboard.png

# The browser tests (tests/browser) drive Debian's Chromium, never a browser of Playwright's.
browser:
	@test -x /usr/bin/chromium || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# The servers of the other source and store kinds, from Debian's packages, each started by the
# tests and the dev stack on free ports (never the machine's own MariaDB on 3306): MariaDB,
# OpenStack Swift with memcached for its tempauth tokens (Rackspace Cloud Files), and the Bigtable
# emulator (Google's apt repository). Also iproute2 and nftables: tests/netns puts each domain's
# servers and workers in a network namespace of its own, fenced by routes and nftables rules.
servers:
	@missing=""; \
	command -v ip >/dev/null || test -x /usr/sbin/ip || test -x /sbin/ip || missing="$$missing iproute2"; \
	command -v nft >/dev/null || test -x /usr/sbin/nft || missing="$$missing nftables"; \
	command -v mariadbd >/dev/null || test -x /usr/sbin/mariadbd || missing="$$missing mariadb-server"; \
	test -x /usr/bin/swift-proxy-server || missing="$$missing swift swift-proxy swift-account swift-container swift-object"; \
	command -v memcached >/dev/null || missing="$$missing memcached"; \
	test -x /usr/lib/google-cloud-sdk/platform/bigtable-emulator/cbtemulator || command -v cbtemulator >/dev/null \
		|| missing="$$missing google-cloud-cli-bigtable-emulator"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .rv-dev
