# seqserve: `make serve` serves the bundled models, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8500
METRICS_PORT ?= 8502

.PHONY: venv serve test test-tools nginx-tool rolling-update lint proto models bench fuzz soak stack-test certs clean

venv: $(STAMP)

$(STAMP): protos/pyproject.toml client/pyproject.toml server/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e protos -e client -e 'server[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/seqserve serve --model-repository models --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

# What the tests use beside Python: Debian's Prometheus (and its promtool) and redis-server (the
# shared session store), which they start themselves, and the Compose plugin for
# `docker compose config -q` (no engine needed).
test-tools:
	@command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v redis-server >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
	@bash deploy/install_compose.sh >/dev/null || echo "compose plugin unavailable: its tests skip"

# The balancer the rolling-update test puts in front of its replicas (as the compose `lb`).
nginx-tool:
	@command -v nginx >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null; }

# A rolling update (every replica SIGTERM'd and started again) and a crash (SIGKILL) under 100
# resumable SDK sessions and Triton sequences, through nginx; prints the figures and appends
# them to bench/results/rolling_update.md (slow suite, ~5 minutes).
rolling-update: $(STAMP) test-tools nginx-tool
	$(BIN)/pytest -m slow -s tests/server/test_rolling_update.py

test: $(STAMP) test-tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python protos/generate.py --check
	$(BIN)/pytest -m 'not slow' --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ruff format --check .

proto: $(STAMP)
	$(BIN)/python protos/generate.py

models: $(STAMP)
	$(BIN)/python -m models.training.train_all

# Sessions first: bench.run's goal table reads bench/results/sessions.json. BENCH_ARGS=--quick
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench.sessions $(BENCH_ARGS)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.overload

# The project's own fuzzer: 10,000 structure-aware cases over every RPC against a real server on
# 127.0.0.1 serving the bundled models, valid traffic beside them (tests/fuzz).
FUZZ_ARGS ?= --cases 10000
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz $(FUZZ_ARGS)

# Soak: 64 callers of mixed valid traffic for 10 minutes (bench/soak.py); SOAK_ARGS=--duration-s 60
SOAK_ARGS ?= --duration-s 600 --callers 64
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Dev certificates, a dev token and a session key for the compose stack, in deploy/certs/ (gitignored).
certs: $(STAMP)
	$(BIN)/python deploy/make_certs.py

# The full container stack (engine, stand-in images, compose up, calls through the LB, teardown).
stack-test: $(STAMP)
	bash deploy/stack_test.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
