#!/usr/bin/env bash
# The project's PostgreSQL server without Docker: Debian's server binaries, run on a data folder
# of the project's (.local/pgdata), listening on localhost:$PGPORT (default 5432).
#
#   bash infra/postgres.sh start|stop|status
#
# The superuser `postgres` has a generated password, kept in .local/secrets/postgres (mode 0600);
# a cluster made before that had one is given it at the next start (over the Unix socket, which
# trusts local connections). If a server on the port already accepts those credentials it is
# reused instead. `start` also creates the database `cancellations`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
DATA="$LOCAL/pgdata"
RUN="$LOCAL/pgrun"
LOG="$LOCAL/postgres.log"
PORT="${PGPORT:-5432}"
DATABASE=cancellations
READY_TIMEOUT=30
# shellcheck source=infra/secrets.sh
source "$ROOT/infra/secrets.sh"

say() { echo "postgres: $*"; }
die() { echo "postgres: ERROR: $*" >&2; exit 1; }

# Postgres refuses to run as root, so as root the server runs as the `postgres` OS user.
if ((EUID == 0)); then AS_ROOT=1; else AS_ROOT=0; fi

as_server_user() {
    # cd / so that the server user never needs access to the caller's working directory.
    if ((AS_ROOT)); then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

find_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return
        fi
    done
    return 1
}

install_server() {
    say "no PostgreSQL server found, installing Debian's (apt-get install postgresql)"
    local sudo=()
    if ((!AS_ROOT)); then
        command -v sudo >/dev/null || die "not root and no sudo: install the server yourself (apt-get install -y postgresql)"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    # The package may create and start its own cluster on 5432; this project runs its own.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters -h | while read -r version name _port status _rest; do
            if [[ "$status" == online* ]]; then
                say "stopping the cluster $version/$name that the package started"
                "${sudo[@]}" pg_ctlcluster "$version" "$name" stop || true
            fi
        done
    fi
}

superuser_psql() {
    PGPASSWORD="$(secret postgres)" PGCONNECT_TIMEOUT=3 "$BIN/psql" -X -q -h localhost -p "$PORT" \
        -U postgres -d postgres -v ON_ERROR_STOP=1 -At "$@"
}

# Our own cluster's superuser gets the generated password, as a SCRAM verifier (the password
# itself never reaches the server, so no log of it can hold it). Over the Unix socket, trusted.
set_superuser_password() {
    local verifier
    verifier="$(secret postgres | "$ROOT/.venv/bin/python" -c \
        'import sys; from shared.provision import scram_verifier; print(scram_verifier(sys.stdin.read().strip()))')"
    PGCONNECT_TIMEOUT=3 "$BIN/psql" -X -q -h "$RUN" -p "$PORT" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 -At -c "ALTER ROLE postgres PASSWORD '$verifier'" >/dev/null
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

ours_running() {
    [[ -f "$DATA/PG_VERSION" ]] && as_server_user "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

# The server user must be able to walk down to .local (e.g. /work/main is fine, /root is not).
make_traversable() {
    local dir="$LOCAL"
    while [[ "$dir" != "/" ]]; do
        if ! runuser -u postgres -- test -x "$dir"; then
            say "making $dir traversable for the postgres user (chmod o+x)"
            chmod o+x "$dir"
        fi
        dir="$(dirname "$dir")"
    done
}

prepare_dirs() {
    mkdir -p "$DATA" "$RUN"
    touch "$LOG"
    chmod 700 "$DATA"
    if ((AS_ROOT)); then
        id -u postgres >/dev/null 2>&1 || useradd --system --user-group --home-dir "$DATA" \
            --shell /usr/sbin/nologin postgres
        chown -R postgres: "$DATA" "$RUN" "$LOG"
        make_traversable
    fi
}

init_cluster() {
    [[ -f "$DATA/PG_VERSION" ]] && return
    say "initialising $DATA"
    local pwfile="$RUN/superuser-password"
    (umask 077 && secret postgres > "$pwfile")
    ((AS_ROOT)) && chown postgres: "$pwfile"
    as_server_user "$BIN/initdb" -D "$DATA" --auth-local=trust --auth-host=scram-sha-256 \
        --username=postgres --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "include_if_exists = 'project.conf'" >> "$DATA/postgresql.conf"
}

# Rewritten at every start, so a moved checkout or another PGPORT takes effect.
write_config() {
    cat > "$DATA/project.conf" <<EOF
# Written by infra/postgres.sh at every start: edit that script, not this file.
listen_addresses = 'localhost'
port = $PORT
unix_socket_directories = '$RUN'
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
# Statement counts per role (each service has its own): what make bench reports per cancellation.
# Loaded at server start only; a server started before this line needs a restart (make down up).
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
EOF
    ((AS_ROOT)) && chown postgres: "$DATA/project.conf"
    return 0
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$BIN/pg_isready" -q -h localhost -p "$PORT"; do
        if ((SECONDS >= deadline)); then
            echo "---- last lines of $LOG" >&2
            tail -n 30 "$LOG" >&2 || true
            die "not ready on localhost:$PORT within ${READY_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

create_database() {
    if [[ -z "$(superuser_psql -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" ]]; then
        superuser_psql -c "CREATE DATABASE $DATABASE"
        say "created database $DATABASE"
    fi
}

start() {
    if ours_running; then
        say "already running ($DATA)"
    elif port_in_use; then
        superuser_psql -c 'SELECT 1' >/dev/null 2>&1 ||
            die "port $PORT is taken by a server that does not accept the superuser password in $SECRETS_DIR/postgres; stop it (e.g. pg_ctlcluster <version> main stop), set PGPORT, or give ADMIN_DATABASE_URL"
        say "a server on localhost:$PORT accepts the generated superuser password, reusing it"
    else
        prepare_dirs
        init_cluster
        write_config
        say "starting (log: $LOG)"
        as_server_user "$BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t "$READY_TIMEOUT" >/dev/null || {
            echo "---- last lines of $LOG" >&2
            tail -n 30 "$LOG" >&2 || true
            die "the server did not start"
        }
    fi
    wait_ready
    if ours_running; then set_superuser_password; fi
    create_database
    say "ready on localhost:$PORT"
}

stop() {
    if ours_running; then
        as_server_user "$BIN/pg_ctl" stop -D "$DATA" -m fast -w >/dev/null
        say "stopped"
    else
        say "not running"
    fi
}

status() {
    if ours_running; then
        say "running ($DATA)"
    elif port_in_use; then
        say "not started by this script, but something listens on localhost:$PORT"
    else
        say "stopped"
        return 3
    fi
}

case "${1:-}" in
    start | stop | status) ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

if ! BIN="$(find_bin)"; then
    [[ "$1" == start ]] || { say "no server installed"; [[ "$1" == stop ]] && exit 0 || exit 3; }
    install_server
    BIN="$(find_bin)" || die "installed postgresql but found no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
fi
"$1"
