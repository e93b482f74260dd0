#!/usr/bin/env bash
# The project's one test command: every test, on a fresh machine, with nothing running.
#
#   1. supply-chain checks (scripts/supply-chain.sh): cargo-deny, offline, on licenses, duplicate
#      crates, sources and the RustSec advisories of ../shared/advisory-db, plus version floors
#      for h2, hyper, rustls and the bundled librdkafka;
#   2. unit and integration tests on librdkafka's in-process mock cluster (`cargo test`);
#   3. the integration suite again against a real Apache Kafka broker (KRaft, single node,
#      fetched from Maven Central by scripts/kafka-local.sh and started on empty storage in
#      $TMPDIR/ksg-kafka-test, removed afterwards; a broker already running from
#      scripts/kafka-local.sh start, or given with KSG_TEST_KAFKA=host:port, is used instead);
#   4. the browser suite: headless Chromium's own EventSource against the starter page;
#   5. h2spec (pinned, installed with `go install` if missing) against both listeners;
#   6. the deployment artifacts (scripts/deploy-check.sh): the container image built from a
#      release build and run by chroot, Kubernetes manifests, Prometheus rules, dashboard;
#   7. a smoke run of the benchmark (scripts/bench.sh smoke) against the gateway and nginx + nchan.
#
# Installs what it needs (cargo-deny, Kafka jars, chromium, npm packages) idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time is printed when the next one starts and listed in the summary.
step_names=()
step_secs=()
step_name=""
step_start=$SECONDS
step() {
  if [ -n "$step_name" ]; then
    step_names+=("$step_name")
    step_secs+=($((SECONDS - step_start)))
    printf '=== (%d s)\n' $((SECONDS - step_start))
  fi
  step_name="$*"
  step_start=$SECONDS
  printf '\n=== %s\n' "$*"
}

step "supply chain: cargo-deny (licenses, bans, sources, advisories) and version floors"
scripts/supply-chain.sh

step "unit + integration tests on the in-process mock cluster"
# Tests that need a real broker are #[ignore]d here, and the runner counts them as ignored.
cargo test --locked -- --show-output 2>&1 | tee /tmp/ksg-test-mock.log
# The benchmark's load generator, a crate of its own (its report and payload tests).
cargo test --locked -p ksg-bench 2>&1 | tail -3
count() { grep -E '^test result: ok\.' "$1" | awk -v f="$2" '{for (i = 1; i < NF; i++) if ($(i + 1) ~ "^" f) s += $i} END {print s + 0}'; }
mock_passed=$(count /tmp/ksg-test-mock.log passed)
mock_ignored=$(count /tmp/ksg-test-mock.log ignored)

# A broker this script starts keeps its data in a directory of its own, empty at the start and
# removed at the stop (KAFKA_LOCAL_EPHEMERAL): the tests create a few thousand partitions per run,
# and a broker that kept every earlier run's topics would start, create topics and stop ever more
# slowly.
started_kafka=0
stop_kafka() { if [ "$started_kafka" = 1 ]; then scripts/kafka-local.sh stop || true; fi; }
trap stop_kafka EXIT
if [ -z "${KSG_TEST_KAFKA:-}" ]; then
  step "starting a local Apache Kafka broker"
  if ! scripts/kafka-local.sh status >/dev/null 2>&1; then
    # For this script's own kafka-local.sh calls (and the benchmark's, which finds this broker
    # running); not for the tests, which start and restart brokers of their own.
    export KAFKA_LOCAL_DATA="${TMPDIR:-/tmp}/ksg-kafka-test" KAFKA_LOCAL_EPHEMERAL=1
    started_kafka=1
    scripts/kafka-local.sh start
  fi
  KSG_TEST_KAFKA="127.0.0.1:${KAFKA_LOCAL_PORT:-9092}"
  export KSG_TEST_KAFKA_SASL="127.0.0.1:${KAFKA_LOCAL_SASL_PORT:-$(( ${KAFKA_LOCAL_PORT:-9092} + 2 ))}"
  broker="Apache Kafka $(scripts/kafka-local.sh version)"
else
  broker="the broker given by KSG_TEST_KAFKA"
fi
step "integration suite against $broker at $KSG_TEST_KAFKA"
# Every integration test, the real-broker ones too, except those that inject faults into a mock
# cluster of their own (named mock_only_*: the runner counts them as filtered out).
env -u KAFKA_LOCAL_EPHEMERAL -u KAFKA_LOCAL_DATA KSG_TEST_KAFKA="$KSG_TEST_KAFKA" cargo test --locked --test '*' -- --show-output --include-ignored --skip mock_only_ 2>&1 | tee /tmp/ksg-test-real.log
real_passed=$(count /tmp/ksg-test-real.log passed)
real_filtered=$(count /tmp/ksg-test-real.log filtered)

step "browser suite: headless Chromium against the starter page"
KSG_BIN="$PWD/target/debug/kafka-sse-gateway" scripts/browser-test.sh

step "HTTP/2 conformance: h2spec against the TLS and h2c listeners"
KSG_BIN="$PWD/target/debug/kafka-sse-gateway" scripts/h2spec.sh

step "deployment: release build, image (podman, checked by chroot), manifests, rules, dashboard"
# The `ci` profile: the release build with thin LTO, for the image check and the smoke run
# (one build of both binaries; the shipped binary and published figures use `--release`).
cargo build --profile ci --locked --workspace --bins
KSG_RELEASE_BIN="$PWD/target/ci/kafka-sse-gateway" scripts/deploy-check.sh

step "benchmark smoke run: ksg-bench against the gateway and nginx + nchan (scripts/bench.sh smoke)"
BENCH_PROFILE=ci scripts/bench.sh smoke

step "summary"
echo "supply chain: scripts/supply-chain.sh passed (licenses, bans, sources, advisories; version floors)"
echo "mock cluster: $mock_passed tests passed (unit + integration); $mock_ignored ignored (they need a real broker and ran in the next pass)"
echo "real broker ($broker at $KSG_TEST_KAFKA): $real_passed integration tests passed; $real_filtered filtered out (mock_only_*: they inject faults into a mock cluster and ran in the first pass)"
echo "browser: see the node test runner's summary above; screenshots of the starter page in target/browser-artifacts/"
echo "h2spec: see the per-listener results above (allowed failures: scripts/h2spec-allowlist.txt)"
echo "deployment: scripts/deploy-check.sh passed (see its steps above)"
echo "benchmark: the smoke run delivered on both servers with nothing lost (table above)"
echo "time per step (wall clock, $SECONDS s in all):"
for i in "${!step_names[@]}"; do
  printf '  %5d s  %s\n' "${step_secs[$i]}" "${step_names[$i]}"
done
