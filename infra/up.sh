#!/usr/bin/env bash
# Brings up what the services and the tests need, without Docker, and writes .local/env.sh:
#   - PostgreSQL (infra/postgres.sh) and Kafka (infra/kafka.sh), started side by side;
#   - the service roles and schemas (python -m shared.provision; generated role passwords in
#     .local/secrets/<role>, mode 0600 — the services get their own DSNs from them, never the
#     admin's: `make run` and the test harnesses build DATABASE_URL / DATABASE_MIGRATION_URL);
#   - every contract topic (python -m shared.topics);
#   - the broker's principals and ACLs of CONTRACT.md "Who may write and read what"
#     (python -m shared.access), each principal's settings in .local/clients/<principal>.env.
#
# It writes two files: .local/env.sh (where the infrastructure is, no credentials: `make run`
# sources it) and .local/admin.env (mode 0600: the database superuser's DSN and the broker's
# superuser; `make test`, `bench` and `chaos` source it for their own setup and checks, the
# services never see it).
#
# With KAFKA_BOOTSTRAP_SERVERS and ADMIN_DATABASE_URL both set, nothing is started: only the
# roles, schemas, topics and (with SASL) principals are provisioned on the infrastructure they
# name, connecting with the KAFKA_* settings given (an admin's). (Values that came from sourced
# .local files, marked by CANCELLATIONS_INFRA=local, do not count as given.)
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
    source infra/secrets.sh
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
    # The local broker's TLS listener, as the broker's superuser (infra/kafka.sh made both).
    export KAFKA_BOOTSTRAP_SERVERS="localhost:$((${KAFKA_PORT:-9092} + 2))"
    export KAFKA_SECURITY_PROTOCOL=SASL_SSL
    export KAFKA_SASL_MECHANISM=SCRAM-SHA-512
    export KAFKA_SSL_CAFILE="$ROOT/.local/kafka/tls/ca.pem"
    export KAFKA_SASL_USERNAME=admin
    KAFKA_SASL_PASSWORD="$(secret kafka-admin)"
    export KAFKA_SASL_PASSWORD
    ADMIN_DATABASE_URL="postgresql://postgres:$(secret postgres)@localhost:${PGPORT:-5432}/cancellations"
    export ADMIN_DATABASE_URL
fi

.venv/bin/python -m shared.provision
.venv/bin/python -m shared.topics
.venv/bin/python -m shared.access
# The development signing key pair the services trust (`cancellations token` signs with it).
.venv/bin/python -m shared.auth keygen .local/auth

# "export NAME=value" for each named variable that is set, quoted for the shell.
exports() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    return 0
}

# The database server without credentials: services get their own roles' DSNs from it.
database_server_url="$(.venv/bin/python -c 'import os; from shared.provision import server_dsn; print(server_dsn(os.environ["ADMIN_DATABASE_URL"]))')"

(umask 077 && cat > .local/admin.env <<ENV
# Written by infra/up.sh (mode 0600): the superusers of the database and of the broker, for
# provisioning and the test harnesses' setup and checks. Never given to a service.
$(exports ADMIN_DATABASE_URL KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD)
ENV
)

cat > .local/env.sh <<ENV
# Written by infra/up.sh: source it to reach the infrastructure it brought up. It holds no
# credentials: each service and client connects with its own (.local/clients/<principal>.env,
# .local/secrets); the superusers are in .local/admin.env.
$(exports KAFKA_BOOTSTRAP_SERVERS KAFKA_SECURITY_PROTOCOL KAFKA_SASL_MECHANISM KAFKA_SSL_CAFILE)
export DATABASE_SERVER_URL=$(printf %q "$database_server_url")
export CANCELLATIONS_INFRA=$infra
# Development: billing takes payments in its sandbox (outside development PAYMENT_GATEWAY must
# be given). A value already in the environment when this file is sourced wins.
export ENVIRONMENT=\${ENVIRONMENT:-development}
export PAYMENT_GATEWAY=\${PAYMENT_GATEWAY:-sandbox}
# Development: the read APIs trust tokens signed with .local/auth/private.pem (cancellations token).
export AUTH_PUBLIC_KEY_FILE=\${AUTH_PUBLIC_KEY_FILE:-$ROOT/.local/auth/public.pem}
export AUTH_PRIVATE_KEY_FILE=\${AUTH_PRIVATE_KEY_FILE:-$ROOT/.local/auth/private.pem}
ENV
echo "up: ready; source .local/env.sh (and .local/admin.env for the superusers)"
