#!/usr/bin/env bash
# The project's one test command: every test, on a fresh machine, with nothing running.
#
#   1. unit and integration tests on librdkafka's in-process mock cluster (`cargo test`);
#   2. the integration suite again against a real Apache Kafka broker (KRaft, single node,
#      fetched from Maven Central by scripts/kafka-local.sh; a broker already given with
#      KSG_TEST_KAFKA=host:port is used instead);
#   3. the browser suite: headless Chromium's own EventSource against the starter page.
#
# Installs what it needs (Kafka jars, chromium, npm packages) idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "unit + integration tests on the in-process mock cluster"
cargo test --locked -- --show-output 2>&1 | tee /tmp/ksg-test-mock.log
mock_passed=$(grep -E '^test result: ok\.' /tmp/ksg-test-mock.log | awk '{s+=$4} END {print s+0}')
mock_skipped=$(grep -c '^skipped' /tmp/ksg-test-mock.log || true)

started_kafka=0
stop_kafka() { if [ "$started_kafka" = 1 ]; then scripts/kafka-local.sh stop || true; fi; }
trap stop_kafka EXIT
if [ -z "${KSG_TEST_KAFKA:-}" ]; then
  step "starting a local Apache Kafka broker"
  if ! scripts/kafka-local.sh status >/dev/null 2>&1; then
    scripts/kafka-local.sh start
    started_kafka=1
  fi
  KSG_TEST_KAFKA="127.0.0.1:${KAFKA_LOCAL_PORT:-9092}"
  export KSG_TEST_KAFKA_SASL="127.0.0.1:${KAFKA_LOCAL_SASL_PORT:-$(( ${KAFKA_LOCAL_PORT:-9092} + 2 ))}"
  broker="Apache Kafka $(scripts/kafka-local.sh version)"
else
  broker="the broker given by KSG_TEST_KAFKA"
fi
step "integration suite against $broker at $KSG_TEST_KAFKA"
KSG_TEST_KAFKA="$KSG_TEST_KAFKA" cargo test --locked --test '*' -- --show-output 2>&1 | tee /tmp/ksg-test-real.log
real_passed=$(grep -E '^test result: ok\.' /tmp/ksg-test-real.log | awk '{s+=$4} END {print s+0}')
real_skipped=$(grep -c '^skipped' /tmp/ksg-test-real.log || true)

step "browser suite: headless Chromium against the starter page"
KSG_BIN="$PWD/target/debug/kafka-sse-gateway" scripts/browser-test.sh

step "summary"
echo "mock cluster: $mock_passed tests passed (unit + integration), of which $mock_skipped returned early (they need a real broker)"
echo "real broker ($broker at $KSG_TEST_KAFKA): $real_passed integration tests passed, of which $real_skipped returned early (mock-only fault injection)"
echo "browser: see the node test runner's summary above"
