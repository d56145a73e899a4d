#!/usr/bin/env bash
# Brings up what the services and the tests need, without Docker, and writes .local/env.sh:
#   - PostgreSQL (infra/postgres.sh) and Kafka (infra/kafka.sh), started side by side;
#   - the service roles and schemas (python -m shared.provision; generated role passwords in
#     .local/secrets/<role>, mode 0600 — the services get their own DSNs from them, never the
#     admin's: `make run` and the test harnesses build DATABASE_URL / DATABASE_MIGRATION_URL);
#   - every contract topic (python -m shared.topics).
#
# With KAFKA_BOOTSTRAP_SERVERS and ADMIN_DATABASE_URL both set, nothing is started: only the
# roles, schemas and topics are provisioned on the infrastructure they name. (Values that came
# from a sourced .local/env.sh, marked by CANCELLATIONS_INFRA=local, do not count as given.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p .local

bash infra/venv.sh

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && -n "${ADMIN_DATABASE_URL:-}" \
      && "${CANCELLATIONS_INFRA:-}" != local ]]; then
    echo "up: using the given infrastructure (KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS)"
    infra=given
else
    infra=local
    export KAFKA_BOOTSTRAP_SERVERS=localhost:9092
    export ADMIN_DATABASE_URL="postgresql://postgres:postgres@localhost:${PGPORT:-5432}/cancellations"
    # Kafka in the background, Postgres in the foreground: a cold start fetches and installs both.
    bash infra/kafka.sh start > .local/kafka-start.log 2>&1 &
    kafka_pid=$!
    postgres_rc=0
    bash infra/postgres.sh start || postgres_rc=$?
    kafka_rc=0
    wait "$kafka_pid" || kafka_rc=$?
    cat .local/kafka-start.log
    if ((postgres_rc || kafka_rc)); then
        echo "up: ERROR: infrastructure did not come up (postgres: exit $postgres_rc, kafka: exit $kafka_rc)" >&2
        exit 1
    fi
fi

.venv/bin/python -m shared.provision
.venv/bin/python -m shared.topics
# The development signing key pair the services trust (`cancellations token` signs with it).
.venv/bin/python -m shared.auth keygen .local/auth

cat > .local/env.sh <<ENV
# Written by infra/up.sh: source it to reach the infrastructure it brought up.
export KAFKA_BOOTSTRAP_SERVERS=$(printf %q "$KAFKA_BOOTSTRAP_SERVERS")
export ADMIN_DATABASE_URL=$(printf %q "$ADMIN_DATABASE_URL")
export CANCELLATIONS_INFRA=$infra
# Development: billing takes payments in its sandbox (outside development PAYMENT_GATEWAY must
# be given). A value already in the environment when this file is sourced wins.
export ENVIRONMENT=\${ENVIRONMENT:-development}
export PAYMENT_GATEWAY=\${PAYMENT_GATEWAY:-sandbox}
# Development: the read APIs trust tokens signed with .local/auth/private.pem (cancellations token).
export AUTH_PUBLIC_KEY_FILE=\${AUTH_PUBLIC_KEY_FILE:-$ROOT/.local/auth/public.pem}
export AUTH_PRIVATE_KEY_FILE=\${AUTH_PRIVATE_KEY_FILE:-$ROOT/.local/auth/private.pem}
ENV
echo "up: ready; source .local/env.sh"
