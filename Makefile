# The two promises of the README: `make demo` and `make test`, each from a clean clone.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup demo test test-stress lint bench bench-download bench-query bench-release bench-transform bench-distributed bench-responsiveness bench-report azurite-start azurite-stop clean

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

# Lint first: a red lint fails the test run before the suite's minutes are spent.
test: lint
	$(VENV)/pytest -q

# The suite 5 times in a row beside a CPU hog on every core (RUNS=N to change; stops at the first failure).
test-stress: setup
	@scripts/stress.sh

LINTED := corpus_manager transforms tests bench scripts

lint: setup
	$(VENV)/ruff check $(LINTED)
	$(VENV)/ruff format --check $(LINTED)
	$(VENV)/mypy corpus_manager transforms

bench: 
	@EXTRA_APT="rclone libsecret-1-0" scripts/setup.sh
	$(VENV)/python -m bench

# issue 15: the download suite (rclone from apt, AzCopy from npm into .bench/npm on first use)
bench-download:
	@EXTRA_APT="rclone libsecret-1-0" scripts/setup.sh
	$(VENV)/python -m bench --suite download

bench-query:
	@EXTRA_APT="rclone libsecret-1-0" scripts/setup.sh
	$(VENV)/python -m bench --suite query

bench-release:
	@EXTRA_APT="rclone libsecret-1-0" scripts/setup.sh
	$(VENV)/python -m bench --suite release

bench-transform: setup
	$(VENV)/python -m bench --suite transform

bench-report: setup
	$(VENV)/python -m bench --suite report

bench-distributed: setup
	$(VENV)/python -m bench.distributed

bench-responsiveness: setup
	$(VENV)/python -m bench.responsiveness

azurite-start: setup
	@scripts/azurite.sh start

azurite-stop:
	@scripts/azurite.sh stop

clean:
	-@scripts/azurite.sh stop
	rm -rf .venv node_modules .azurite .demo .bench
