# The gateway's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
MQTT_PORT ?= 1883
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?= --minutes 30
FUZZ_SECONDS ?= 60

.PHONY: run test lint typecheck format system-deps install install-test lock screenshots bench soak chaos fuzz clean

# Python packages come from the hash-pinned lock files in requirements/ (`make lock` writes
# them from pyproject.toml), then the gateway itself with --no-deps: nothing outside the locks.
# A changed lock file reinstalls.
PIP_INSTALL := $(PY) -m pip install --quiet --require-hashes

$(VENV)/.run-installed: requirements/run.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements/run.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.test-installed: requirements/test.lock $(VENV)/.run-installed
	$(PIP_INSTALL) -r requirements/test.lock
	touch $@

$(VENV)/.bench-installed: requirements/bench.lock $(VENV)/.run-installed
	$(PIP_INSTALL) -r requirements/bench.lock
	touch $@

benchmarks/node_modules/.installed: benchmarks/package.json benchmarks/package-lock.json
	cd benchmarks && npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.run-installed
install-test: $(VENV)/.test-installed

## Start the gateway on http://$(HOST):$(PORT)/ with an embedded MQTT broker on $(MQTT_PORT)
## (or MQTT_URL / REDIS_URL when set).
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py rungateway --host $(HOST) --port $(PORT) --mqtt-port $(MQTT_PORT)

## Install what the tests need (Python packages, Mosquitto, Redis), lint, type-check, test.
test: install-test system-deps lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

system-deps:
	sh scripts/system-deps.sh

## Refresh the README's screenshots (the page tests take them).
screenshots: install-test system-deps
	SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest tests/e2e/test_pages.py

## Benchmarks: Mosquitto, the Channels tutorial and the gateway under the same load, about
## 30 minutes, then the embedded broker beside Mosquitto and amqtt; needs Node 18+.
## BENCH_ARGS=--quick for a tiny subset (see benchmarks/README.md).
bench: $(VENV)/.bench-installed benchmarks/node_modules/.installed system-deps
	$(PY) -m benchmarks $(BENCH_ARGS)
	$(PY) -m benchmarks brokers

## Soak: the gateway under a steady mixed load for 30 minutes; exits non-zero if memory or
## descriptors grow. SOAK_ARGS='--minutes 5' for a shorter one (see benchmarks/README.md).
soak: $(VENV)/.bench-installed benchmarks/node_modules/.installed system-deps
	$(PY) -m benchmarks soak $(SOAK_ARGS)

## Faults on real Mosquitto, Redis, daphne and bridge processes, five times longer than in
## `make test`; prints what each scenario sent, lost and repeated, and its recovery time.
chaos: install-test system-deps
	CHAOS_SCALE=5 $(PY) -m pytest tests/e2e/test_chaos.py tests/e2e/test_bridge_reliability.py \
		tests/e2e/test_shards.py \
		--timeout=900 $(PYTEST_ARGS)

## Fuzz the frame parser and the payload codecs, FUZZ_SECONDS each (tests/fuzz/). New inputs
## are kept in var/fuzz/corpus/ and crashes in var/fuzz/; the committed seeds are only read.
fuzz: install-test
	mkdir -p var/fuzz/corpus/frames var/fuzz/corpus/codecs
	$(PY) tests/fuzz/fuzz_frames.py var/fuzz/corpus/frames tests/fuzz/corpus/frames \
		-max_total_time=$(FUZZ_SECONDS) -artifact_prefix=var/fuzz/frames-
	$(PY) tests/fuzz/fuzz_codecs.py var/fuzz/corpus/codecs tests/fuzz/corpus/codecs \
		-max_total_time=$(FUZZ_SECONDS) -artifact_prefix=var/fuzz/codecs-

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-test
	$(VENV)/bin/mypy

format: install-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Write the lock files in requirements/ from pyproject.toml: the same versions as before
## wherever the bounds allow, hashes for every file of them. LOCK_ARGS=--upgrade takes the
## newest versions the bounds allow; LOCK_ARGS='--upgrade-package django' one package only.
LOCK_ARGS ?=
UV_VERSION := 0.13.9
LOCK := $(VENV)/bin/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock' $(LOCK_ARGS)
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv==$(UV_VERSION)'
	$(LOCK) -o requirements/run.lock
	$(LOCK) --extra test -c requirements/run.lock -o requirements/test.lock
	$(LOCK) --extra postgres -c requirements/run.lock -o requirements/postgres.lock
	$(LOCK) --extra bench -c requirements/test.lock -o requirements/bench.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
