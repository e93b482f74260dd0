#!/usr/bin/env bash
# kafka-local.sh — a real single-node Apache Kafka 4.x broker (KRaft, no ZooKeeper)
# on 127.0.0.1, for tests and local use: a PLAINTEXT listener plus a SASL_PLAINTEXT
# listener (mechanism PLAIN, one user) for client authentication. Needs only Java 17+
# and Maven: the Kafka jars come from Maven Central (no tarball download, no Docker).
#
# Usage: scripts/kafka-local.sh start|stop|status|version|produce TOPIC|topics [TopicCommand args...]
#   start    fetch jars (once, cached), format storage (once), start the broker in the
#            background and wait until it answers metadata requests. Idempotent.
#   stop     SIGTERM, wait, then SIGKILL if needed. OK if not running.
#   status   exit 0 "running pid N on 127.0.0.1:PORT (SASL_PLAINTEXT/PLAIN on
#            127.0.0.1:SASL_PORT, user U)", or exit 1 "not running".
#   version  print the Kafka version in use.
#   produce TOPIC
#            produce stdin's lines KEY<TAB>VALUE to TOPIC with Kafka's console producer
#            (the Java client and its default partitioner), e.g.
#            printf 'k\tv\n' | scripts/kafka-local.sh produce x
#   topics   run Kafka's topic CLI against the local broker, e.g.
#            scripts/kafka-local.sh topics --create --topic x --partitions 3
#            (over PLAINTEXT; start also writes <data>/client-sasl.properties, a Java
#            client config for the SASL user, for Kafka's tools' --command-config)
#
# Environment:
#   KAFKA_LOCAL_VERSION          Kafka version from Maven Central (default 4.4.0)
#   KAFKA_LOCAL_PORT             PLAINTEXT listener port (default 9092)
#   KAFKA_LOCAL_CONTROLLER_PORT  KRaft controller port (default KAFKA_LOCAL_PORT+1)
#   KAFKA_LOCAL_SASL_PORT        SASL_PLAINTEXT (PLAIN) listener port (default KAFKA_LOCAL_PORT+2)
#   KAFKA_LOCAL_SASL_USER        its one user (default ksg; letters, digits, . _ -)
#   KAFKA_LOCAL_SASL_PASSWORD    that user's password (default ksg-secret; no " or \)
#   KAFKA_LOCAL_HOME             jar cache (default ~/.cache/ksg-kafka); jars in <home>/<version>/libs
#   KAFKA_LOCAL_DATA             data dir: logs, config, pid, broker log (default /tmp/ksg-kafka-data)
#   KAFKA_LOCAL_START_TIMEOUT    seconds to wait for the broker (default 90)
#   KAFKA_LOCAL_EPHEMERAL        1: start stops a broker left running on the data dir and starts
#                                on empty storage; stop removes the data dir (scripts/test.sh and
#                                scripts/bench.sh use this, so no run inherits another's topics)
set -euo pipefail

VERSION="${KAFKA_LOCAL_VERSION:-4.4.0}"
LOG4J_VERSION="2.25.5"   # pinned for log4j-api/core/slf4j-impl so they always match
PORT="${KAFKA_LOCAL_PORT:-9092}"
CPORT="${KAFKA_LOCAL_CONTROLLER_PORT:-$((PORT + 1))}"
SPORT="${KAFKA_LOCAL_SASL_PORT:-$((PORT + 2))}"
SASL_USER="${KAFKA_LOCAL_SASL_USER:-ksg}"
SASL_PASSWORD="${KAFKA_LOCAL_SASL_PASSWORD:-ksg-secret}"
HOST=127.0.0.1
CACHE="${KAFKA_LOCAL_HOME:-$HOME/.cache/ksg-kafka}/$VERSION"
LIBS="$CACHE/libs"
DATA="${KAFKA_LOCAL_DATA:-/tmp/ksg-kafka-data}"
PIDFILE="$DATA/kafka.pid"
LOGFILE="$DATA/kafka.log"
TIMEOUT="${KAFKA_LOCAL_START_TIMEOUT:-90}"
EPHEMERAL="${KAFKA_LOCAL_EPHEMERAL:-0}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

say() { echo "kafka-local: $*"; }
die() { echo "kafka-local: error: $*" >&2; exit 1; }

# Runs a Kafka class with the cached jars; tools log at WARN to stderr.
kjava() {
  "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$CACHE/log4j2.properties" \
    -Dksg.log.level=WARN "$@"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Prints the pid if the pid file names a live kafka.Kafka process.
live_pid() {
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

# Port of the running broker (from its config), falling back to $PORT.
running_port() {
  local p
  p="$(sed -n "s#^listeners=PLAINTEXT://$HOST:\([0-9]*\),.*#\1#p" "$DATA/server.properties" 2>/dev/null)"
  echo "${p:-$PORT}"
}

# SASL port and user in the broker's config; empty if it has no SASL listener (a config
# written by an older version of this script: stop and start again to add it).
running_sasl_port() {
  sed -n "s#^listeners=.*SASL_PLAINTEXT://$HOST:\([0-9]*\).*#\1#p" "$DATA/server.properties" 2>/dev/null || true
}
running_sasl_user() {
  sed -n 's#^listener\.name\.sasl_plaintext\.plain\.sasl\.jaas\.config=.* user_\([^=]*\)=.*#\1#p' \
    "$DATA/server.properties" 2>/dev/null || true
}

# " (SASL_PLAINTEXT/PLAIN on HOST:SPORT, user U)" suffix for status lines, from the config.
sasl_note() {
  local sp
  sp="$(running_sasl_port)"
  if [[ -n "$sp" ]]; then
    echo " (SASL_PLAINTEXT/PLAIN on $HOST:$sp, user $(running_sasl_user))"
  else
    echo " (no SASL listener: started by an older kafka-local.sh; stop and start to add it)"
  fi
}

# The user name becomes a JAAS option name (user_NAME) and the password a quoted JAAS
# value inside a .properties line: keep both to what needs no escaping.
check_sasl_credentials() {
  [[ "$SASL_USER" =~ ^[A-Za-z0-9._-]+$ ]] ||
    die "KAFKA_LOCAL_SASL_USER must be letters, digits, '.', '_' or '-' (got '$SASL_USER')"
  [[ -n "$SASL_PASSWORD" && "$SASL_PASSWORD" != *[\"\\]* && "$SASL_PASSWORD" != *$'\n'* ]] ||
    die "KAFKA_LOCAL_SASL_PASSWORD must be non-empty, without '\"', '\\' or newlines"
}

fetch_libs() {
  [[ -f "$LIBS/kafka_2.13-$VERSION.jar" ]] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is required to fetch Kafka jars"
  mkdir -p "$CACHE"
  say "fetching Apache Kafka $VERSION jars from Maven Central into $LIBS"
  # Throwaway pom: the broker (kafka_2.13), the tools jar for TopicCommand (without
  # its Kafka Connect runtime, not needed here) and an slf4j->log4j2 binding.
  cat >"$CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.ksg</groupId><artifactId>kafka-local</artifactId><version>1</version>
  <dependencyManagement><dependencies>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-bom</artifactId>
      <version>$LOG4J_VERSION</version><type>pom</type><scope>import</scope></dependency>
  </dependencies></dependencyManagement>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$VERSION</version>
      <exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion></exclusions></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS.tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$CACHE/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" </dev/null >"$CACHE/mvn.log" 2>&1; then
    tail -n 30 "$CACHE/mvn.log" >&2
    die "Maven could not fetch org.apache.kafka:kafka_2.13:$VERSION (full log: $CACHE/mvn.log)"
  fi
  rm -rf "$LIBS" && mv "$LIBS.tmp" "$LIBS"
}

write_log4j() {
  cat >"$CACHE/log4j2.properties" <<'EOF'
# Console only; the broker's stdout/stderr go to $KAFKA_LOCAL_DATA/kafka.log.
status = warn
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:ksg.log.level:-INFO}
rootLogger.appenderRef.console.ref = STDERR
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

write_server_props() {
  mkdir -p "$DATA"
  cat >"$DATA/server.properties" <<EOF
# Written by scripts/kafka-local.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT,SASL_PLAINTEXT://$HOST:$SPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_PLAINTEXT://$HOST:$SPORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
# SASL_PLAINTEXT listener for clients only (inter-broker and controller traffic stay on
# PLAINTEXT/CONTROLLER): mechanism PLAIN, one user from the user_NAME="password" option.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
log.dirs=$DATA/logs
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
EOF
  # Java client config for the SASL listener, e.g. topics --command-config <this file>.
  cat >"$DATA/client-sasl.properties" <<EOF
# Written by scripts/kafka-local.sh; rewritten on every start.
bootstrap.servers=$HOST:$SPORT
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$SASL_USER" password="$SASL_PASSWORD";
EOF
}

format_storage() {
  [[ -f "$DATA/logs/meta.properties" ]] && return 0
  local id
  id="$(kjava kafka.tools.StorageTool random-uuid)" || die "could not generate a cluster id"
  say "formatting $DATA/logs (cluster id $id)"
  kjava kafka.tools.StorageTool format -t "$id" -c "$DATA/server.properties" --ignore-formatted \
    >"$DATA/format.log" 2>&1 || { cat "$DATA/format.log" >&2; die "storage format failed"; }
}

# Broker is ready when the port answers and a metadata request (topic list) succeeds,
# and the SASL port (if the config has one) answers too.
wait_ready() {
  local pid=$1 deadline=$((SECONDS + TIMEOUT)) sport
  sport="$(running_sasl_port)"
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"; tail -n 40 "$LOGFILE" >&2; die "broker exited during startup (log: $LOGFILE)"
    fi
    if port_open "$PORT" && { [[ -z "$sport" ]] || port_open "$sport"; } &&
      timeout 30 "$BASH" "$0" topics --list >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  tail -n 40 "$LOGFILE" >&2
  cmd_stop >&2   # don't leave a half-started broker behind
  die "broker not ready after ${TIMEOUT}s (log: $LOGFILE)"
}

# Removes the data dir of an ephemeral broker, only if it is one this script wrote.
remove_data() {
  [[ -e "$DATA" ]] || return 0
  [[ "$DATA" == /?* && -f "$DATA/server.properties" ]] &&
    grep -q '^# Written by scripts/kafka-local.sh' "$DATA/server.properties" ||
    die "KAFKA_LOCAL_EPHEMERAL: $DATA was not written by kafka-local.sh; not removing it"
  rm -rf "$DATA"
}

cmd_start() {
  local pid port
  if [[ "$EPHEMERAL" == 1 ]]; then
    cmd_stop >/dev/null
    remove_data
  fi
  if pid="$(live_pid)"; then
    port="$(running_port)"
    if port_open "$port"; then say "already running pid $pid on $HOST:$port$(sasl_note)"; return 0; fi
    PORT="$port"; say "pid $pid is still starting; waiting"
    wait_ready "$pid"; say "Apache Kafka $(cat "$DATA/kafka.version") ready on $HOST:$PORT$(sasl_note)"; return 0
  fi
  rm -f "$PIDFILE"
  command -v "$JAVA" >/dev/null || die "java not found (Java 17+ required)"
  check_sasl_credentials
  for p in "$PORT" "$CPORT" "$SPORT"; do port_open "$p" && die "port $p on $HOST is already in use by another process"; done
  fetch_libs
  write_log4j
  write_server_props
  format_storage
  echo "$VERSION" >"$DATA/kafka.version"
  nohup "$JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CACHE/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$DATA/server.properties" </dev/null >"$LOGFILE" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  wait_ready "$pid"
  say "Apache Kafka $VERSION ready on $HOST:$PORT$(sasl_note)"
}

cmd_stop() {
  local pid
  if ! pid="$(live_pid)"; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid did not stop within 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$PIDFILE"
  say "stopped pid $pid"
  if [[ "$EPHEMERAL" == 1 ]]; then remove_data; fi
}

cmd_status() {
  local pid
  if pid="$(live_pid)"; then echo "running pid $pid on $HOST:$(running_port)$(sasl_note)"; else echo "not running"; exit 1; fi
}

cmd_version() {
  if live_pid >/dev/null && [[ -f "$DATA/kafka.version" ]]; then cat "$DATA/kafka.version"; else echo "$VERSION"; fi
}

cmd_topics() {
  fetch_libs
  [[ -f "$CACHE/log4j2.properties" ]] || write_log4j
  live_pid >/dev/null && PORT="$(running_port)"
  kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$PORT" "$@"
}

# Produces stdin's lines to a topic with Kafka's console producer (the Java client, with its
# default partitioner): each line is KEY<TAB>VALUE.
cmd_produce() {
  [[ $# -eq 1 ]] || die "usage: produce TOPIC (lines KEY<TAB>VALUE on stdin)"
  fetch_libs
  [[ -f "$CACHE/log4j2.properties" ]] || write_log4j
  live_pid >/dev/null && PORT="$(running_port)"
  kjava org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$HOST:$PORT" --topic "$1" \
    --property parse.key=true --property "key.separator=$(printf '\t')"
}

case "${1:-}" in
  start) cmd_start ;;
  produce) shift; cmd_produce "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  version) cmd_version ;;
  topics) shift; cmd_topics "$@" ;;
  *) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2 ;;
esac
