#!/bin/sh
# The Kafka container of docker-compose.yml, secured as infra/kafka.sh secures `make run`'s broker:
# SASL/SCRAM-SHA-512 for every client, the StandardAuthorizer denying what no ACL allows, the
# superuser `admin` created with the storage, the controller listener for the broker alone
# (PLAIN). No TLS inside the compose network. Passwords come from the secrets volume, which the
# one-shot `secrets` container filled; nothing here has a default.
set -eu

secret() { cat "/secrets/$1"; }
ADMIN="$(secret kafka-admin)"
CONTROLLER="$(secret kafka-controller)"
DATA=/var/lib/kafka/data
CONF=/tmp/server.properties
umask 077

cat > "$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@kafka:9093
listeners=BROKER://:9092,CONTROLLER://:9093,HOST://:19092
advertised.listeners=BROKER://kafka:9092,HOST://localhost:19092
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,BROKER:SASL_PLAINTEXT,HOST:SASL_PLAINTEXT
inter.broker.listener.name=BROKER
sasl.mechanism.controller.protocol=PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="$CONTROLLER" user_controller="$CONTROLLER";
listener.name.broker.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.broker.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN";
listener.name.host.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.host.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
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
CONF

# What the healthcheck connects with (kafka-broker-api-versions.sh --command-config).
cat > /tmp/admin.properties <<CONF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN";
CONF

if [ ! -f "$DATA/meta.properties" ]; then
    /opt/kafka/bin/kafka-storage.sh format -t "$(/opt/kafka/bin/kafka-storage.sh random-uuid)" -c "$CONF" \
        --add-scram "SCRAM-SHA-512=[name=admin,password=$ADMIN]"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$CONF"
