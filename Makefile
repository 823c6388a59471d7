# One target per habit; .ci/run calls the same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast lint bench clean install-dev install-demo postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[sklearn]'
	touch $@

# torch is pinned to the CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

install-demo: $(VENV)/.demo-installed
install-dev: $(VENV)/.dev-installed

## make demo: install, generate a 1M-row churn dataset and model, run the job
demo: install-demo
	$(BIN)/infermill demo

# The postgres tests start their own PostgreSQL 15 server (tests/postgres.py): only the binaries are needed.
# As root (CI) they are installed from Debian's packages when missing; otherwise say how.
PG_BIN ?= /usr/lib/postgresql/15/bin
postgres:
	@if [ "$$INFERMILL_SKIP_POSTGRES" != 1 ] && [ ! -x $(PG_BIN)/initdb ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; \
		else \
			echo "PostgreSQL 15 server binaries missing: apt-get install postgresql-15 (or INFERMILL_SKIP_POSTGRES=1)"; \
			exit 1; \
		fi; \
	fi

## make test: install and run the whole test suite (what CI runs)
test: install-dev postgres
	$(BIN)/python -m pytest -q
	$(MAKE) test-dagster
	$(MAKE) test-airflow
	$(MAKE) test-prefect

# Dagster in its own environment (its dependencies conflict with other orchestrators'): the versions tested.
DAGSTER_VENV := .venv-dagster
DAGSTER_PIP  := $(DAGSTER_VENV)/bin/python -m pip --disable-pip-version-check -q
$(DAGSTER_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DAGSTER_VENV)
	$(DAGSTER_PIP) install -e '.[dagster,sklearn]' 'dagster==1.13.29' 'dagster-pipes==1.13.29' 'pytest>=8' 'pytest-timeout>=2.2'
	touch $@

## make test-dagster: the Dagster integration, run through Dagster's own runner (offline)
.PHONY: test-dagster
test-dagster: $(DAGSTER_VENV)/.installed
	DAGSTER_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 $(DAGSTER_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/integrations/test_dagster.py

## make test-airflow: the Airflow operator through Airflow's own dag.test(), in its own venv (its dependencies
## clash with ours); pinned to the Airflow release it was tested with
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_VERSION ?= 2.10.5
$(AIRFLOW_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip --disable-pip-version-check -q install -e '.[airflow,sklearn]' \
		'apache-airflow==$(AIRFLOW_VERSION)' 'pytest>=8' 'pytest-timeout>=2.2'
	touch $@
.PHONY: test-airflow
test-airflow: $(AIRFLOW_VENV)/.installed
	AIRFLOW__CORE__LOAD_EXAMPLES=False DO_NOT_TRACK=1 SCARF_ANALYTICS=false \
		$(AIRFLOW_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/integrations/test_airflow.py

## make test-prefect: the Prefect integration, in its own environment (Prefect's dependencies conflict with
## other orchestrators'): a tiny job through Prefect's test harness, offline
PREFECT_VENV ?= .venv-prefect
.PHONY: test-prefect
$(PREFECT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PREFECT_VENV)
	$(PREFECT_VENV)/bin/python -m pip --disable-pip-version-check -q install -e '.[prefect,sklearn]' \
		'prefect==3.9.1' 'pytest>=8' 'pytest-timeout>=2.2'
	touch $@
test-prefect: $(PREFECT_VENV)/.installed
	$(PREFECT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/integrations/test_prefect.py

## make test-fast: the inner loop, without slow tests
test-fast: install-dev postgres
	$(BIN)/python -m pytest -q -m "not slow"

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

## make bench: speed and memory targets, measured against baselines in the same run
## (the Ray Data legs need `pip install -e '.[bench]'`; without Ray they print why they are skipped)
bench: install-dev postgres
	$(BIN)/python bench/bench_tabular.py
	$(BIN)/python bench/bench_overhead.py
	$(BIN)/python bench/bench_embeddings.py
	$(BIN)/python bench/bench_ray.py
	$(BIN)/python bench/bench_files.py
	$(BIN)/python bench/bench_plan.py
	$(BIN)/python bench/bench_sql.py
	$(BIN)/python bench/bench_accelerate.py

clean:
	rm -rf $(VENV) .venv-dagster .venv-airflow .venv-prefect build dist src/*.egg-info .pytest_cache .mypy_cache \
		.ruff_cache infermill-demo
