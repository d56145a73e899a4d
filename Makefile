# Every target works from a fresh clone: what it needs is installed or fetched on the way.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON := .venv/bin/python
PYTEST_ARGS ?=
SUPERVISE_ARGS ?=

.PHONY: run up down test test-unit lint bench chaos connector docs venv clean distclean

## run: bring up Postgres and Kafka, then run the six services (Ctrl-C stops them)
run: venv up
	source .local/env.sh && exec $(PYTHON) infra/supervise.py $(SUPERVISE_ARGS)

## up: Postgres + Kafka without Docker, roles/schemas and topics provisioned, .local/env.sh written
up: venv
	bash infra/up.sh

## down: stop Postgres and Kafka (data is kept)
down:
	bash infra/down.sh

## test: the whole suite against the infrastructure (PYTEST_ARGS="-k ..." to narrow it)
test: venv up
	source .local/env.sh && source .local/admin.env && $(PYTHON) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

## test-unit: unit and handler tests only, no infrastructure
test-unit: venv
	$(PYTHON) -m pytest tests/unit tests/handlers -p no:cacheprovider $(PYTEST_ARGS)

## lint: ruff (lint and format) over the tree, mypy --strict on shared/ and every domain module;
## the event schemas and AsyncAPI documents current and valid (check-jsonschema, @asyncapi/cli);
## the Kubernetes manifests, alert rules and dashboard rendered and checked (infra/check-deploy.sh)
lint: venv
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	bash infra/check-schemas.sh
	bash infra/check-deploy.sh

## bench: throughput and latency of the whole system against a bare baseline (BENCH_ARGS="--size 2000")
bench: venv up
	source .local/env.sh && source .local/admin.env && $(PYTHON) -m tests.bench $(BENCH_ARGS)

## chaos: one fault at a time under steady load, then every request's effects checked (CHAOS_ARGS="--long")
chaos: venv up
	source .local/env.sh && source .local/admin.env && $(PYTHON) -m tests.chaos $(CHAOS_ARGS)

## connector: the reference PMS connector (CONNECTOR_INTEGRATION=praktika PMS_API_URL=http://pms.example)
connector: venv up
	source .local/env.sh && if [[ -f .local/clients/pms-connector-$${CONNECTOR_INTEGRATION:-praktika}.env ]]; then \
	    source .local/clients/pms-connector-$${CONNECTOR_INTEGRATION:-praktika}.env; fi && $(PYTHON) -m pms_connector

## docs: the AsyncAPI documents and the JSON Schema of every event of the contract
docs: venv
	$(PYTHON) -m shared.asyncapi --out docs/asyncapi
	$(PYTHON) -m shared.schemas --out docs/schemas

## venv: .venv exactly as locked in uv.lock
venv:
	bash infra/venv.sh

## clean: stop everything and delete its data and logs (keeps the download caches)
clean: down
	rm -rf .local/pgdata .local/pgrun .local/postgres.log .local/env.sh .local/admin.env .local/kafka-start.log \
	       .local/kafka/data .local/kafka/kafka.log .local/kafka/kafka.pid \
	       .local/kafka/server.properties .local/kafka/log4j2.yaml

## distclean: clean, and delete the caches and the virtualenv too
distclean: clean
	rm -rf .local .venv
