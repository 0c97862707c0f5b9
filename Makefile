# Two commands on a fresh machine: `make run` and `make test`.
# With DATABASE_URL / REDIS_URL unset, config.devstack starts embedded PostgreSQL and Redis.
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVSTACK := $(PY) -m config.devstack

.PHONY: install run test lint format manage shell clean bench-auth mlflow-ui

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(DEVSTACK) run

test: $(STAMP) lint
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
