#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker + controller) without Docker:
# the broker's jars come from Maven Central (infra/kafka/pom.xml) and run on the machine's Java.
#
#   bash infra/kafka.sh start|stop|status
#
# Secured as a deployment is (docs/design.md#access-and-isolation):
#   localhost:9094  SASL_SSL, SCRAM-SHA-512: what clients use (certificate from a local CA);
#   localhost:9092  SASL_PLAINTEXT, SCRAM-SHA-512: the broker's own listener (inter-broker);
#   localhost:9093  the controller, SASL_PLAINTEXT with PLAIN for the broker only.
# KAFKA_PORT (default 9092) moves all three: KAFKA_PORT, +1 and +2.
# The StandardAuthorizer denies whatever no ACL allows (allow.everyone.if.no.acl.found=false);
# the superuser `admin` (SCRAM, created when the storage is formatted) provisions principals and
# ACLs (python -m shared.access). Every secret is generated: .local/secrets/kafka-admin,
# kafka-controller and kafka-keystore (mode 0600); the CA and the broker's certificate are in
# .local/kafka/tls (clients trust ca.pem).
#
# Everything lives in .local/kafka: libs/ (download cache), data/, tls/, server.properties, kafka.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="$ROOT/.local/kafka"
LIBS="$HOME_DIR/libs"
DATA="$HOME_DIR/data"
CONF="$HOME_DIR/server.properties"
LOG4J="$HOME_DIR/log4j2.yaml"
PIDFILE="$HOME_DIR/kafka.pid"
LOG="$HOME_DIR/kafka.log"
POM="$ROOT/infra/kafka/pom.xml"
PORT="${KAFKA_PORT:-9092}"         # SASL_PLAINTEXT (inter-broker)
CONTROLLER_PORT=$((PORT + 1))      # the controller
TLS_PORT=$((PORT + 2))             # SASL_SSL (clients)
TLS_DIR="$HOME_DIR/tls"
# shellcheck source=infra/secrets.sh
source "$ROOT/infra/secrets.sh"
SECURITY_STAMP="$HOME_DIR/data/.security"  # which security the storage was formatted for
SECURITY_VERSION="sasl-scram-512 v1"
SECURITY_MARK="# security: $SECURITY_VERSION"  # in server.properties of a secured start
START_TIMEOUT=180  # a KRaft node restarted quickly can wait ~60 s to re-register

say() { echo "kafka: $*"; }
die() { echo "kafka: ERROR: $*" >&2; exit 1; }

# Exit 0 when a Kafka broker on localhost:$PORT answers an ApiVersions request (the one request a
# SASL listener answers before authentication), 2 when nothing listens there, 3 when something
# listens but does not answer as Kafka. Plain python3 speaking the wire protocol, so it needs no
# virtualenv or Kafka CLI tools.
probe() {
    python3 - "$PORT" <<'EOF'
import socket, struct, sys

port = int(sys.argv[1])
try:
    sock = socket.create_connection(("localhost", port), timeout=3)
except OSError:
    sys.exit(2)
try:
    sock.settimeout(5)
    client_id = b"kafka.sh"
    # ApiVersions v0, request header v1, no body.
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(body)) + body)

    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    (size,) = struct.unpack(">i", read(4))
    resp = read(size)
    correlation_id, error_code = struct.unpack(">ih", resp[:6])
    sys.exit(0 if correlation_id == 1 and error_code == 0 else 3)
except (OSError, EOFError, struct.error):
    sys.exit(3)
finally:
    sock.close()
EOF
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    # The pid must still be our broker, not a process that got the number after a reboot.
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'kafka\.Kafka'; then
        echo "$pid"
    else
        return 1
    fi
}

fetch_jars() {
    # Cached: fetched again only when missing or when the pom changed since the last fetch.
    local stamp="$LIBS/.pom.sha256" want
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    if [[ -d "$LIBS" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
    say "fetching the broker's jars from Maven Central into $LIBS"
    rm -rf "$LIBS"
    local out
    if ! out="$(mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS" 2>&1)"; then
        echo "$out" >&2
        die "could not fetch the broker's jars"
    fi
    echo "$want" > "$stamp"
}

# A local CA and the broker's certificate (localhost, 127.0.0.1), made once; the broker reads
# them from a PKCS#12 keystore whose password is generated too.
make_certificates() {
    [[ -s "$TLS_DIR/broker.p12" && -s "$TLS_DIR/ca.pem" ]] && return
    command -v openssl >/dev/null || die "openssl not found (apt-get install -y openssl)"
    say "making a local CA and the broker's certificate in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    local keystore_password
    keystore_password="$(secret kafka-keystore)"
    (
        cd "$TLS_DIR"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=cancellations local CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' > broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
            -extfile broker.ext -out broker.pem 2>/dev/null
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
            -out broker.p12 -passout "pass:$keystore_password"
        rm -f broker.csr broker.ext ca.srl
        chmod 644 ca.pem  # what every client is given
    )
}

write_config() {
    mkdir -p "$DATA"
    local admin_password controller_password keystore_password
    admin_password="$(secret kafka-admin)"
    controller_password="$(secret kafka-controller)"
    keystore_password="$(secret kafka-keystore)"
    (umask 077 && cat > "$CONF" <<EOF
# Written by infra/kafka.sh at every start: edit that script, not this file (mode 0600: secrets).
$SECURITY_MARK
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:$CONTROLLER_PORT
listeners=BROKER://localhost:$PORT,TLS://localhost:$TLS_PORT,CONTROLLER://localhost:$CONTROLLER_PORT
advertised.listeners=BROKER://localhost:$PORT,TLS://localhost:$TLS_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,BROKER:SASL_PLAINTEXT,TLS:SASL_SSL
inter.broker.listener.name=BROKER
sasl.mechanism.controller.protocol=PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="$controller_password" user_controller="$controller_password";
listener.name.broker.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.broker.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
listener.name.tls.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.tls.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.tls.ssl.keystore.type=PKCS12
listener.name.tls.ssl.keystore.location=$TLS_DIR/broker.p12
listener.name.tls.ssl.keystore.password=$keystore_password
listener.name.tls.ssl.key.password=$keystore_password
listener.name.tls.ssl.truststore.type=PEM
listener.name.tls.ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.tls.ssl.client.auth=requested
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:controller
log.dirs=$DATA
num.partitions=6
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
)
    cat > "$LOG4J" <<'EOF'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
EOF
}

format_storage() {
    if [[ -f "$DATA/meta.properties" ]]; then
        [[ -f "$SECURITY_STAMP" && "$(cat "$SECURITY_STAMP")" == "$SECURITY_VERSION" ]] && return
        # Storage from before the broker was secured has no admin credential: start it afresh
        # (local development data only; the topics are created again by `make up`).
        say "the storage in $DATA predates SASL/SCRAM and ACLs: formatting it afresh"
        rm -rf "$DATA"
        mkdir -p "$DATA"
    fi
    local cluster_id
    cluster_id="$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)"
    say "formatting $DATA (cluster $cluster_id)"
    # No --standalone: controller.quorum.voters already names the single voter. The superuser's
    # SCRAM credential is written with the storage, so the broker can authenticate it at once.
    java -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$CONF" \
        --add-scram "SCRAM-SHA-512=[name=admin,password=$(secret kafka-admin)]" >/dev/null
    echo "$SECURITY_VERSION" > "$SECURITY_STAMP"
}

start() {
    local pid rc=0
    if pid="$(running_pid)" && ! grep -q "^$SECURITY_MARK" "$CONF" 2>/dev/null; then
        say "running without SASL and ACLs (started by an older version of this script): restarting it"
        stop
    fi
    if pid="$(running_pid)"; then
        say "already running (pid $pid)"
    else
        probe || rc=$?
        case $rc in
            0) say "a Kafka broker already answers on localhost:$PORT, reusing it"; return ;;
            3) die "something on localhost:$PORT is not a Kafka broker that answers; free the port" ;;
        esac
        command -v java >/dev/null || die "java not found (apt-get install -y default-jdk-headless)"
        fetch_jars
        make_certificates
        write_config
        format_storage
        say "starting the broker (log: $LOG)"
        # setsid: the broker outlives the process group of whoever started it (pg_ctl does the
        # same for Postgres), so ending that shell or job does not take the broker down.
        setsid nohup java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$LOG4J" \
            -cp "$LIBS/*" kafka.Kafka "$CONF" >"$LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" > "$PIDFILE"
    fi

    local deadline=$((SECONDS + START_TIMEOUT))
    until probe; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "---- last lines of $LOG" >&2
            tail -n 40 "$LOG" >&2 || true
            die "the broker exited during start"
        fi
        if ((SECONDS >= deadline)); then
            echo "---- last lines of $LOG" >&2
            tail -n 40 "$LOG" >&2 || true
            die "the broker did not answer on localhost:$PORT within ${START_TIMEOUT}s (pid $pid still running)"
        fi
        sleep 0.5
    done
    say "ready on localhost:$TLS_PORT (SASL_SSL) and localhost:$PORT (SASL_PLAINTEXT) (pid $pid)"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        say "not running"
        return
    fi
    say "stopping (pid $pid)"
    kill -TERM "$pid"
    # A controlled shutdown of a single node normally takes a few seconds.
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still running after 30s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

status() {
    local pid rc=0
    probe || rc=$?
    if pid="$(running_pid)"; then
        if ((rc == 0)); then say "running (pid $pid), answering on localhost:$PORT"; else say "running (pid $pid), not answering yet"; fi
    elif ((rc == 0)); then
        say "not started by this script, but a broker answers on localhost:$PORT"
    else
        say "stopped"
        return 3
    fi
}

case "${1:-}" in
    start) mkdir -p "$HOME_DIR"; start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
