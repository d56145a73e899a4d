#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker + controller) without Docker:
# the broker's jars come from Maven Central (infra/kafka/pom.xml) and run on the machine's Java.
#
#   bash infra/kafka.sh start|stop|status
#
# Everything lives in .local/kafka: libs/ (download cache), data/, server.properties, kafka.log.
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
PORT=9092
START_TIMEOUT=180  # a KRaft node restarted quickly can wait ~60 s to re-register

say() { echo "kafka: $*"; }
die() { echo "kafka: ERROR: $*" >&2; exit 1; }

# Exit 0 when a Kafka broker on localhost:$PORT answers a Metadata request with at least one
# broker, 2 when nothing listens there, 3 when something listens but does not answer as Kafka.
# Plain python3 speaking the wire protocol, so it needs no virtualenv or Kafka CLI tools.
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
    # Metadata v4 (Kafka 4 dropped older versions), request header v1, empty topic list.
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", 0, False)
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
    correlation_id, _throttle, brokers = struct.unpack(">iii", resp[:12])
    sys.exit(0 if correlation_id == 1 and brokers >= 1 else 3)
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

write_config() {
    mkdir -p "$DATA"
    cat > "$CONF" <<EOF
# Written by infra/kafka.sh at every start: edit that script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
listeners=PLAINTEXT://localhost:$PORT,CONTROLLER://localhost:9093
advertised.listeners=PLAINTEXT://localhost:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
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
    [[ -f "$DATA/meta.properties" ]] && return
    local cluster_id
    cluster_id="$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)"
    say "formatting $DATA (cluster $cluster_id)"
    # No --standalone: controller.quorum.voters already names the single voter.
    java -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$CONF" >/dev/null
}

start() {
    local pid rc=0
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
    say "ready on localhost:$PORT (pid $pid)"
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
