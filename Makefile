# The two commands in the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:8469

.PHONY: install install-test dist dashboards prometheus deploy-tools browser demo run test lint bench bench-rules soak clean landing-screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The agent: the package with its `agent` extra (a bare `pip install mfu-agent` is the client only).
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[agent]'

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# The wheel and the sdist, in dist/ (docs/deploy.md: installing them).
dist: $(BIN)/python
	$(BIN)/pip install -q 'build>=1'
	$(BIN)/python -m build --outdir dist .

# dashboards/*.json and their Kubernetes copies, from their source in mfu_dashboards/ (docs/dashboards.md).
dashboards: install-test
	$(BIN)/python scripts/gen_dashboards.py

# Real Prometheus and promtool for the tests (Debian package `prometheus`).
prometheus:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || scripts/apt-install.sh prometheus

# systemd-analyze for tests/test_deploy.py (Debian package `systemd`).
deploy-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || scripts/apt-install.sh systemd

# Headless Chromium for tests/test_landing.py (Debian package `chromium`).
browser:
	@command -v chromium >/dev/null 2>&1 || scripts/apt-install.sh chromium

demo: install
	$(BIN)/mfu-agent demo --listen $(LISTEN)

run: install
	$(BIN)/mfu-agent run --listen $(LISTEN)

lint: install-test
	$(BIN)/ruff check .

# Two workers, each taking whole test files (their module fixtures: agents, Prometheus, Chromium): most
# tests wait on real processes, so two workers halve the wall time on two cores (11 -> 6 minutes).
test: install-test prometheus deploy-tools browser lint
	$(BIN)/pytest -q -n 2 --dist loadfile

# Benchmarks (docs/performance.md): about 13 minutes; BENCH_ARGS=--quick for about 3.
bench: install-test prometheus
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The rule groups at fleet scale alone (2,048 nodes): about 6 minutes; BENCH_ARGS=--quick for about 1.5.
bench-rules: install-test prometheus
	$(BIN)/python -m bench.rules_scale $(BENCH_ARGS)

# The soak (docs/reliability.md#soak): one agent under every fault at once for 10 minutes;
# SOAK_ARGS="--minutes 3" for a shorter one, SOAK_ARGS="--json soak.json" for every sample.
soak: install-test
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# docs/landing.png: the page at / of `mfu-agent demo`, in headless Chromium.
landing-screenshot: install browser
	$(BIN)/python scripts/landing_screenshot.py docs/landing.png

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
