#!/usr/bin/env bash
# The benchmark set: the gateway (release build) and nginx + nchan side by side, under the same
# load from the same generator (ksg-bench), in the same run, on this machine.
#
#   scripts/bench.sh          every workload; writes docs/benchmarks.json (one run per line)
#                             and docs/benchmarks.md (tables, machine, profile)
#   scripts/bench.sh smoke    a few seconds of W2 on both servers, results in /tmp only: checks
#                             that the benchmark itself works (scripts/test.sh runs it)
#   scripts/bench.sh report   docs/benchmarks.md again from docs/benchmarks.json, and
#                             docs/profiles.md from the last profiles' data if it is still in
#                             /tmp/ksg-bench, without running anything
#   scripts/bench.sh only W3 [WK ...]
#                             the named workloads alone, on both servers; results in
#                             /tmp/ksg-bench/only.json and a table (docs/ untouched)
#   scripts/bench.sh profile [P2 P3-2000 ...]
#                             the profiles alone (all, or the named ones): docs/profiles.md
#   scripts/bench.sh compare NAME=BINARY...
#                             before/after: W2 at 1,024 and 4,096 streams on each given gateway
#                             binary in turn, then nchan, BENCH_REPS times (default 3), all in
#                             one run; results in /tmp/ksg-bench/compare.json and a table.
#                             BENCH_COMPARE="CONNECTIONS:RATE ..." picks other W2 shapes
#                             (default "4:100 16:100"; "16:800" is past the knee);
#                             BENCH_PATHS="all key" also runs each shape as key streams (the
#                             WK pair below; default "all"); "keys" runs W3's shape (e.g.
#                             BENCH_COMPARE="16:2000 16:20000"), "ingest" W8's (gateway only,
#                             100 key streams on CONNECTIONS connections: "1:20000"), "churn"
#                             W4's (W2's shape, 100 resumes a second: BENCH_PATHS="all churn"
#                             gives W4 beside W2 on each binary)
#
# Workloads (each described in docs/benchmarks.md):
#   W1  idle hold: RSS per open stream at 51,200 and 200,192 streams, and (gateway only, 60 s)
#       at 1,000,192 streams, with /healthz and /metrics asked once a second throughout; then
#       (W1-busy) the million at W1_RATE broadcast records/s (default 1)
#   W2  broadcast fan-out: 1,024 and 4,096 streams of one topic at 100 records/s, then 4,096
#       streams at higher rates up to the knee
#   W3  keyed: 4,096 streams, one key each, 2,000 and 20,000 records/s spread over the keys
#   W4  reconnect churn: 1,024 streams, 100 drops/s, each resumed with Last-Event-ID
#   W6  watchlists: 1,024 streams, each of 300 keys out of 5,000 (?key=…), at 2,000 records/s
#       spread over the keys (gateway only: nchan has no stream of several channels' keys)
#   W7  filtered: 10,240 streams of every key over 100 distinct where= filters (?where=/k=N on
#       the record's JSON value), at W7_RATE (500) records/s spread over 100 keys: each record
#       reaches 102 streams (gateway only: nchan has no value filter)
#   W5  1% of 4,096 streams stalled (a client that stops reading) on a busy topic
#   WK  the key path beside the all-keys path, same deliveries: every record has key k0, and
#       1,024 / 4,096 streams read /bench-fanout (all keys) or /bench-fanout/k0 (one key)
#   WH  WK over HTTP/1.1: 1,024 streams at 100 records/s, each on a connection of its own (as
#       EventSource over HTTP/1.1 has), all-keys and key streams
#   W8  ingest: a 12-partition topic at 10,000 to 40,000 records/s of 100 keys, read by 100 key
#       streams and 10 all-keys streams: CPU per record ingested, and ksg_consumer_lag once a
#       second (gateway only: nchan has no Kafka to ingest from); then higher rates (W8-ramp)
#       until one is not held (the records the broker has not acknowledged, or the gateway's
#       consumer lag, grow by 1% of the rate a second), and the highest rate held for 60 s
#       (W8-hold)
#   WS  256 stalled catch-ups: key streams ?from=earliest on one connection whose client grants
#       no window, while the key's records keep coming: the RSS growth (gateway only)
#   WM  memory given back: W2 past the knee (4,096 streams, 800 records/s), then every
#       connection closed and the RSS read 60 s later
#   W9  rolling restart: 51,200 streams (half all-keys, half one key each of 4,096) on one
#       gateway; a second one starts, the first gets SIGTERM, and every stream resumes on the
#       second as EventSource does (retry: plus jitter, Last-Event-ID, one new connection per
#       old one): time until every stream is back, each resume's answer time (as the client
#       saw it, and as the new gateway's ksg_answer_seconds did), refusals, loss,
#       and the new process's CPU and RSS beside the old one's (gateway only); then
#       W9-outage: 10,240 streams at 20 records/s, the second gateway starting 30 s after the
#       first stopped: its peak RSS and the time until every stream is back
#
# Profiles (docs/profiles.md): the gateway alone under one workload's load, `perf record -g` over
# the window (W9: the new process while the streams come back), in runs of their own after the
# measured ones, so perf's cost stays out of the figures: P2 (W2, 1,024 streams), PK (WK's key
# streams, 1,024), P3-2000 and P3-20000 (W3), P4 (W4), P6 (W6), P7 (W7), P8 (W8 at 20,000
# records/s), P9 (W9's new process) and P1 (W1-busy, the million streams).
#
# Every mode but report first runs `ksg-bench floor`: this machine's CPU per thread wake-up and
# per small loopback write to a sleeping reader, printed, written above a full run's results,
# and given to each run (--wake-us) to price its server's context switches.
#
# Each run restarts the server it measures, so RSS starts clean. Kafka comes from
# scripts/kafka-local.sh, nginx + nchan from scripts/nchan.sh (both installed when missing).
# CPU and RSS are the server's own, from /proc; the load generator runs on the same cores.
#
# Environment: BENCH_SECONDS (measured window, default 15), BENCH_WARMUP (default 3),
# BENCH_OUT (default docs), BENCH_PERF=0 to skip the profile, BENCH_GW_BIN (another gateway
# binary to measure, e.g. an older build), W9_CONNECTIONS and W9_RATE (W9's size), W1_RATE (W1-busy's rate),
# BENCH_PROFILE (the cargo profile built and run, default release; scripts/test.sh's smoke run
# uses `ci`, thin LTO, which builds faster: figures for docs/ come from release).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-full}"
# compare NAME=BINARY...: the binaries to compare.
compared=("${@:2}")
SECONDS_=${BENCH_SECONDS:-15}
WARMUP=${BENCH_WARMUP:-3}
OUT=${BENCH_OUT:-docs}
DATA=/tmp/ksg-bench
GW_PORT=18443
GW_ADMIN=19464
say() { printf 'bench: %s\n' "$*" >&2; }

mkdir -p "$DATA"
if [ "$mode" = compare ] || [ "$mode" = only ]; then
  OUT="$DATA/$mode"
fi
profiled=("${@:2}")
if [ "$mode" = smoke ]; then
  SECONDS_=3
  WARMUP=1
  OUT="$DATA/smoke"
fi
mkdir -p "$OUT"

PROFILE=${BENCH_PROFILE:-release}
cargo build --profile "$PROFILE" --locked --workspace --bins >&2
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
GW_BIN="${BENCH_GW_BIN:-$TARGET/$PROFILE/kafka-sse-gateway}"
BENCH="$TARGET/$PROFILE/ksg-bench"

# What this machine charges for a wake-up and for a small loopback write to a sleeping reader
# (ksg-bench floor), measured before anything else runs: the floor under sparse traffic.
floor=""
if [ "$mode" != report ]; then
  floor=$("$BENCH" floor)
  say "this machine: $floor"
fi

# One CA and one server certificate for both servers (rustls refuses a CA as a server cert).
if ! openssl x509 -checkend 86400 -noout -in "$DATA/cert.pem" >/dev/null 2>&1; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=ksg-bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign -keyout "$DATA/ca.key" -out "$DATA/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$DATA/key.pem" -out "$DATA/leaf.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$DATA/leaf.ext"
  openssl x509 -req -in "$DATA/leaf.csr" -CA "$DATA/ca.pem" -CAkey "$DATA/ca.key" \
    -CAcreateserial -days 30 -extfile "$DATA/leaf.ext" -out "$DATA/cert.pem" 2>/dev/null
fi
export NCHAN_CERT="$DATA/cert.pem" NCHAN_KEY="$DATA/key.pem"

started_kafka=0
gw_pid=""
gw2_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  [ -n "$gw2_pid" ] && kill "$gw2_pid" 2>/dev/null || true
  scripts/nchan.sh stop >/dev/null 2>&1 || true
  if [ "$started_kafka" = 1 ]; then scripts/kafka-local.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if [ "$mode" != report ] && ! scripts/kafka-local.sh status >/dev/null 2>&1; then
  # A broker of its own, on empty storage removed at the stop (see scripts/kafka-local.sh).
  export KAFKA_LOCAL_DATA="${TMPDIR:-/tmp}/ksg-kafka-bench" KAFKA_LOCAL_EPHEMERAL=1
  started_kafka=1
  scripts/kafka-local.sh start >&2
fi
BROKER="127.0.0.1:${KAFKA_LOCAL_PORT:-9092}"
for t in "bench-fanout 1" "bench-keys 6" "bench-ingest 12"; do
  [ "$mode" = report ] && break
  set -- $t
  scripts/kafka-local.sh topics --create --if-not-exists --topic "$1" --partitions "$2" >/dev/null
done

# gw_launch PORT ADMIN_PORT LOG [stopped]: starts a gateway in the background ($! is its pid);
# "stopped": a shell that stops itself (SIGSTOP) and, once continued, becomes the gateway.
gw_launch() {
  local cmd=("$GW_BIN")
  [ "${4:-}" = stopped ] && cmd=(sh -c 'kill -STOP $$; exec "$0"' "$GW_BIN")
  KSG_KAFKA_BROKERS="$BROKER" KSG_TOPICS='bench-*' KSG_AUTH=none KSG_MAX_STREAM_OPENS_PER_SEC=0 KSG_LISTEN="127.0.0.1:$1" \
    KSG_ADMIN_LISTEN="127.0.0.1:$2" KSG_TLS_CERT="$DATA/cert.pem" \
    KSG_TLS_KEY="$DATA/key.pem" KSG_DRAIN_DELAY_SECS=0 KSG_MAX_CONNECTIONS=20000 \
    KSG_METADATA_REFRESH_SECS=1 \
    "${cmd[@]}" >"$3" 2>&1 &
}
# gw_ready ADMIN_PORT LOG: waits for /readyz.
gw_ready() {
  for _ in $(seq 1 200); do
    curl -sf "127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.1
  done
  cat "$2" >&2
  return 1
}
gw_start() {
  gw_stop
  gw_launch "$GW_PORT" "$GW_ADMIN" "$DATA/gateway.log"
  gw_pid=$!
  gw_ready "$GW_ADMIN" "$DATA/gateway.log"
}
# The second gateway of a rolling restart (W9), beside the first; "stopped": it starts only
# when continued (W9-outage).
gw2_start() {
  gw2_stop
  gw_launch "$((GW_PORT + 1))" "$((GW_ADMIN + 1))" "$DATA/gateway2.log" "${1:-}"
  gw2_pid=$!
  [ "${1:-}" = stopped ] || gw_ready "$((GW_ADMIN + 1))" "$DATA/gateway2.log"
}
gw2_stop() {
  if [ -n "$gw2_pid" ]; then
    kill "$gw2_pid" 2>/dev/null || true
    kill -CONT "$gw2_pid" 2>/dev/null || true
    wait "$gw2_pid" 2>/dev/null || true
    gw2_pid=""
  fi
}
gw_stop() {
  if [ -n "$gw_pid" ]; then
    kill "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
    gw_pid=""
  fi
}
nchan_start() { scripts/nchan.sh stop >/dev/null 2>&1 || true; scripts/nchan.sh start >&2; }

results="$OUT/benchmarks.json"
[ "$mode" = smoke ] && results="$OUT/smoke.json"
[ "$mode" = compare ] && results="$DATA/compare.json"
[ "$mode" = only ] && results="$DATA/only.json"
[ "$mode" = profile ] && results="$DATA/profiled.json"
[ "$mode" = report ] || : >"$results"

# run NAME SERVER ARGS...: one ksg-bench run against a freshly started SERVER.
run() {
  local name=$1 server=$2
  shift 2
  local url publish pids
  if [ "$server" = gateway ]; then
    gw_start
    pids=$gw_pid
  else
    nchan_start
    pids=$(scripts/nchan.sh pids | paste -sd,)
  fi
  local args=()
  for a in "$@"; do
    case "$a" in
      URL_FANOUT) [ "$server" = gateway ] && a="https://127.0.0.1:$GW_PORT/bench-fanout" || a="https://127.0.0.1:8743/sub/fanout" ;;
      URL_KEYS_ALL) a="https://127.0.0.1:$GW_PORT/bench-keys" ;;
      RESTART_URL) a="https://127.0.0.1:$((GW_PORT + 1))/" ;;
      NEW_PID) gw2_start; a=$gw2_pid ;;
      NEW_PID_STOPPED) gw2_start stopped; a=$gw2_pid ;;
      NEW_METRICS) a="http://127.0.0.1:$((GW_ADMIN + 1))/metrics" ;;
      URL_KEYS) [ "$server" = gateway ] && a="https://127.0.0.1:$GW_PORT/bench-keys/{key}" || a="https://127.0.0.1:8743/sub/{key}" ;;
      URL_FANOUT_KEY) [ "$server" = gateway ] && a="https://127.0.0.1:$GW_PORT/bench-fanout/{key}" || a="https://127.0.0.1:8743/sub/{key}" ;;
      PUB_FANOUT_KEY) [ "$server" = gateway ] && a="kafka://$BROKER/bench-fanout" || a="http://127.0.0.1:8780/pub/{key}" ;;
      PUB_FANOUT) [ "$server" = gateway ] && a="kafka://$BROKER/bench-fanout" || a="http://127.0.0.1:8780/pub/fanout" ;;
      PUB_KEYS) [ "$server" = gateway ] && a="kafka://$BROKER/bench-keys" || a="http://127.0.0.1:8780/pub/{key}" ;;
      # W8 and WS run on the gateway only.
      URL_FANOUT_KEY_EARLIEST) a="https://127.0.0.1:$GW_PORT/bench-fanout/{key}?from=earliest" ;;
      URL_INGEST) a="https://127.0.0.1:$GW_PORT/bench-ingest" ;;
      URL_INGEST_KEY) a="https://127.0.0.1:$GW_PORT/bench-ingest/{key}" ;;
      PUB_INGEST) a="kafka://$BROKER/bench-ingest" ;;
      METRICS) a="http://127.0.0.1:$GW_ADMIN/metrics" ;;
      PROBE) a="http://127.0.0.1:$GW_ADMIN/healthz,http://127.0.0.1:$GW_ADMIN/metrics" ;;
    esac
    args+=("$a")
  done
  # PERF_AS=NAME: a profile run, perf's data in $DATA/profiles/NAME.data.
  [ -n "${PERF_AS:-}" ] && args+=(--perf "$DATA/profiles/$PERF_AS.data")
  say "$name on $server: ${args[*]}"
  "$BENCH" run --name "$name" --server "$server" --ca "$DATA/ca.pem" --pids "$pids" \
    --wake-us "$(field wake_us "$floor")" \
    --warmup "$WARMUP" --seconds "$SECONDS_" "${args[@]}" | tee -a "$results"
  gw2_stop
}

both() { run "$1" gateway "${@:2}"; run "$1" nchan "${@:2}"; }

# docs/benchmarks.md: its text up to the results marker, then the machine and the table of
# $results.
write_report() {
  {
    sed -n "1,/^<!-- results -->/p" docs/benchmarks.md | sed "\$d"
    echo "<!-- results -->"
    if [ "$mode" = report ]; then
      # The results' own run: its machine and gateway, as written then.
      sed -n '/^<!-- results -->/,/^| workload/p' docs/benchmarks.md | sed '1d;$d'
    else
      echo
      echo "Run on $(date -u +%Y-%m-%d) by \`scripts/bench.sh\`: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB,"
      echo "Linux $(uname -r), Apache Kafka $(scripts/kafka-local.sh version), nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') +"
      echo "nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null), gateway $(git describe --always --dirty 2>/dev/null)."
      echo "Raw results: \`docs/benchmarks.json\` (one run per line). Profiles: \`docs/profiles.md\`."
      echo "This machine (\`ksg-bench floor\`, before the runs): a thread's wake-up $(field wake_us "$floor") CPU-µs,"
      echo "a 200-byte loopback write to a sleeping reader $(field write_us "$floor") CPU-µs (the writer's side)."
      echo
    fi
    "$BENCH" report "$results"
  } >"$DATA/benchmarks.md"
  mv "$DATA/benchmarks.md" "$OUT/benchmarks.md"
  say "wrote $results and $OUT/benchmarks.md"
}

# field NAME LINE: the value of NAME in LINE, one JSON object of ksg-bench.
field() {
  local v
  v=$(sed -nE 's/.*"'"$1"'":"([^"]*)".*/\1/p' <<<"$2")
  [ -n "$v" ] || v=$(sed -nE 's/.*"'"$1"'":([^,}]*).*/\1/p' <<<"$2")
  echo "$v"
}

# path_args PATH: the URL and publisher of W2's shape as all-keys streams ("all") or, with every
# record keyed k0, as all-keys ("all1") or key streams ("key") with the same deliveries; W3's
# shape ("keys": one key each of 4,096, on the 6-partition topic); W8's ("ingest": key streams of
# 100 keys and 10 all-keys streams on the 12-partition topic, gateway only); W4's ("churn": W2's
# shape with 100 streams a second dropped and resumed).
path_args() {
  case "$1" in
    all) echo "--url URL_FANOUT --publish PUB_FANOUT" ;;
    all1) echo "--url URL_FANOUT --publish PUB_FANOUT_KEY --keys 1" ;;
    key) echo "--url URL_FANOUT_KEY --publish PUB_FANOUT_KEY --keys 1" ;;
    keys) echo "--url URL_KEYS --publish PUB_KEYS --keys 4096" ;;
    ingest) echo "--url URL_INGEST_KEY --keys 100 --extra URL_INGEST --extra-streams 10 --publish PUB_INGEST --metrics METRICS" ;;
    churn) echo "--url URL_FANOUT --publish PUB_FANOUT --churn 100" ;;
  esac
}

# profile_spec NAME: a profile's title (P_TITLE), the stream limit it needs (P_MAX, if any) and
# its load (P_ARGS, as for run).
profile_spec() {
  P_MAX=""
  case "$1" in
    P2) P_TITLE="W2, 1,024 all-keys streams, 100 records/s"
      P_ARGS=(--url URL_FANOUT --publish PUB_FANOUT --connections 4 --streams 256 --rate 100) ;;
    PK) P_TITLE="WK, 1,024 key streams, 100 records/s of their key"
      # shellcheck disable=SC2207
      P_ARGS=($(path_args key) --connections 4 --streams 256 --rate 100) ;;
    P3-2000|P3-20000) P_TITLE="W3, 4,096 key streams (one key each), ${1#P3-} records/s"
      P_ARGS=(--url URL_KEYS --publish PUB_KEYS --connections 16 --streams 256 --keys 4096 --rate "${1#P3-}") ;;
    P4) P_TITLE="W4, 1,024 streams, 100 resumes/s"
      P_ARGS=(--url URL_FANOUT --publish PUB_FANOUT --connections 4 --streams 256 --rate 100 --churn 100) ;;
    P6) P_TITLE="W6, 1,024 watchlists of 300 keys out of 5,000, 2,000 records/s"
      P_ARGS=(--url URL_KEYS_ALL --publish PUB_KEYS --keys 5000 --watch 300 --connections 4 --streams 256 --rate 2000) ;;
    P7) P_TITLE="W7, 10,240 streams over 100 distinct where= filters, ${W7_RATE:-500} records/s"
      P_ARGS=(--url URL_KEYS_ALL --publish PUB_KEYS --keys 100 --filters 100 --connections 40 --streams 256 --rate "${W7_RATE:-500}") ;;
    P8) P_TITLE="W8, 20,000 records/s ingested, 100 key streams and 10 all-keys streams"
      P_ARGS=(--url URL_INGEST_KEY --keys 100 --connections 1 --streams 100 --extra URL_INGEST
        --extra-streams 10 --publish PUB_INGEST --rate 20000 --metrics METRICS) ;;
    P9) P_TITLE="W9, the new process while 51,200 streams resume on it"
      P_ARGS=(--url URL_KEYS --mix URL_KEYS_ALL --keys 4096 --connections "${W9_CONNECTIONS:-200}"
        --streams 256 --publish PUB_KEYS --rate "${W9_RATE:-10}" --warmup 10 --restart RESTART_URL
        --new-pid NEW_PID --new-metrics NEW_METRICS) ;;
    P1) P_TITLE="W1-busy, 1,000,192 streams, ${W1_RATE:-1} broadcast record/s"
      P_MAX=1000192
      P_ARGS=(--url URL_FANOUT --publish PUB_FANOUT --connections 3907 --streams 256
        --rate "${W1_RATE:-1}" --warmup 5 --seconds 20) ;;
    *) say "unknown profile $1 (${ALL_PROFILES[*]})"; exit 2 ;;
  esac
}
ALL_PROFILES=(P2 PK P3-2000 P3-20000 P4 P6 P7 P8 P9 P1)

# profile NAME: one profile run (see the header): perf's data in $DATA/profiles/NAME.data, the
# run's line in $results.
profile() {
  profile_spec "$1"
  mkdir -p "$DATA/profiles"
  rm -f "$DATA/profiles/$1".*
  # What was profiled, for docs/profiles.md.
  if [ -n "${BENCH_GW_BIN:-}" ]; then echo "$BENCH_GW_BIN"; else git describe --always --dirty; fi \
    >"$DATA/profiles/gateway"
  if [ -n "$P_MAX" ]; then
    KSG_MAX_STREAMS=$P_MAX PERF_AS=$1 run "$1" gateway "${P_ARGS[@]}"
  else
    PERF_AS=$1 run "$1" gateway "${P_ARGS[@]}"
  fi
}

# profile_section NAME: the profile's part of docs/profiles.md: the run's own figures (perf's
# cost included), its busy threads, and the top symbols (self time).
profile_section() {
  profile_spec "$1"
  local line
  line=$(grep "\"name\":\"$1\"" "$DATA/profiled.json" | tail -1)
  echo "### $1: $P_TITLE"
  echo
  if [ "$1" = P9 ]; then
    echo "- all $(field streams "$line") streams back in $(field restart_seconds "$line") s; each resume's"
    echo "  answer p99 $(field restart_answer_p99_ms "$line") ms; the new process's CPU until then"
    echo "  $(field restart_server_cpu_seconds "$line") s"
  else
    echo "- $(field events_per_sec "$line") events/s, $(field cpu_us_per_event "$line") CPU-µs per event"
    echo "  ($(field cpu_us_per_record "$line") per record), p99 $(field p99_ms "$line") ms"
  fi
  echo "- threads (CPU ms/s, context switches/s): $(field threads "$line")"
  echo
  echo '```text'
  perf report -i "$DATA/profiles/$1.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | cut -c1-150 | sed -E 's/ +$//' | head -20 || true
  echo '```'
  echo
}

# docs/profiles.md: the profiles taken in this run.
write_profiles() {
  {
    echo "# Profiles"
    echo
    echo "The gateway alone under each workload's load (docs/benchmarks.md), \`perf record -F 999 -g\`"
    echo "over the measured window (P9: the new process from the SIGTERM until every stream is"
    echo "back), self time by shared object and symbol, the top 20. Each profile's run is its own,"
    echo "after the measured ones: its figures include perf's cost, and its threads line says which"
    echo "threads were busy. Written by \`scripts/bench.sh\` (all of them, after a full run) or"
    echo "\`scripts/bench.sh profile [NAME...]\`; \`scripts/bench.sh report\` writes it again from the"
    echo "last profiles' data."
    echo
    echo "Run on $(date -u -r "$DATA/profiled.json" +%Y-%m-%d): $(nproc) cores, Linux $(uname -r), Apache"
    echo "Kafka $(scripts/kafka-local.sh version), gateway $(cat "$DATA/profiles/gateway" 2>/dev/null)."
    echo
    for p in "$@"; do profile_section "$p"; done
  } >"$DATA/profiles.md"
  mv "$DATA/profiles.md" "$OUT/profiles.md"
  say "wrote $OUT/profiles.md"
}

if [ "$mode" = report ]; then
  write_report
  # The last profiles, if their data is still there.
  have=()
  for p in "${ALL_PROFILES[@]}"; do
    [ -f "$DATA/profiles/$p.data" ] && grep -q "\"name\":\"$p\"" "$DATA/profiled.json" 2>/dev/null &&
      have+=("$p")
  done
  [ ${#have[@]} -eq 0 ] || write_profiles "${have[@]}"
  exit 0
fi

# The names `only` takes (W1 includes W1-busy).
WORKLOADS="W1 W1-busy W2 W3 W4 W5 W6 W7 WK WH W8 WS WM W9"

# workload NAME: one workload of the set, on both servers.
workload() {
  case "$1" in
    W1)
      both W1 --url URL_FANOUT --idle true --connections 200 --streams 256 --warmup 5
      both W1 --url URL_FANOUT --idle true --connections 782 --streams 256 --warmup 5
      # A million streams (3,907 connections x 256) on the gateway alone: nchan would need about
      # 10 GiB for them (10.3 KiB per stream above).
      KSG_MAX_STREAMS=1000192 run W1 gateway --url URL_FANOUT --idle true --connections 3907 \
        --streams 256 --warmup 5 --seconds 60 --probe PROBE
      workload W1-busy
      ;;
    W1-busy)
      # The same million with broadcast records: W1_RATE records/s, default 1, a million
      # deliveries a second, about what the load generator reads beside the gateway on this
      # machine's 2 cores (10 records/s would be 10 million a second). Part of W1; alone, it
      # measures the busy million without the idle runs before it.
      KSG_MAX_STREAMS=1000192 run W1-busy gateway --url URL_FANOUT --publish PUB_FANOUT \
        --connections 3907 --streams 256 --rate "${W1_RATE:-1}" --warmup 5 --seconds 60 --probe PROBE
      ;;
    W2)
      both W2 --url URL_FANOUT --publish PUB_FANOUT --connections 4 --streams 256 --rate 100
      both W2 --url URL_FANOUT --publish PUB_FANOUT --connections 16 --streams 256 --rate 100
      for rate in 200 400 800; do
        both W2 --url URL_FANOUT --publish PUB_FANOUT --connections 16 --streams 256 --rate "$rate"
      done
      ;;
    W3)
      for rate in 2000 20000; do
        both W3 --url URL_KEYS --publish PUB_KEYS --connections 16 --streams 256 --keys 4096 --rate "$rate"
      done
      ;;
    W6)
      run W6 gateway --url URL_KEYS_ALL --publish PUB_KEYS --keys 5000 --watch 300 \
        --connections 4 --streams 256 --rate 2000
      ;;
    W7)
      run W7 gateway --url URL_KEYS_ALL --publish PUB_KEYS --keys 100 --filters 100 \
        --connections 40 --streams 256 --rate "${W7_RATE:-500}"
      ;;
    W4) both W4 --url URL_FANOUT --publish PUB_FANOUT --connections 4 --streams 256 --rate 100 --churn 100 ;;
    W5) SECONDS_=40 both W5 --url URL_FANOUT --publish PUB_FANOUT --connections 16 --streams 256 --rate 100 --stall 0.01 ;;
    WK)
      for conns in 4 16; do
        # shellcheck disable=SC2046
        run WK-all gateway $(path_args all1) --connections "$conns" --streams 256 --rate 100
        # shellcheck disable=SC2046
        run WK-key gateway $(path_args key) --connections "$conns" --streams 256 --rate 100
        # shellcheck disable=SC2046
        run WK-key nchan $(path_args key) --connections "$conns" --streams 256 --rate 100
      done
      ;;
    W8)
      # 10,000 to 40,000 records/s (W8), then up by half each step (W8-ramp) until the broker or
      # the gateway's consumer no longer keeps the pace (ksg-bench's "held"); then the highest
      # rate held, for 60 s (W8-hold).
      local w8=(--url URL_INGEST_KEY --keys 100 --connections 1 --streams 100 --extra URL_INGEST
        --extra-streams 10 --publish PUB_INGEST --metrics METRICS)
      local held="" name line
      for rate in 10000 20000 40000 60000 90000 135000 200000 300000 450000 675000 1000000; do
        name=W8
        [ "$rate" -gt 40000 ] && name=W8-ramp
        run "$name" gateway "${w8[@]}" --rate "$rate"
        line=$(tail -n 1 "$results")
        [ "$(field held "$line")" = true ] || break
        held=$rate
      done
      if [ -n "$held" ]; then
        SECONDS_=60 run W8-hold gateway "${w8[@]}" --rate "$held"
      else
        say "W8: no rate was held"
      fi
      ;;
    WS)
      run WS gateway --url URL_FANOUT_KEY_EARLIEST --keys 1 --connections 0 --streams 256 \
        --stalled 256 --stall-window 0 --publish PUB_FANOUT_KEY --rate 1000 --seconds 10
      ;;
    WH)
      # As WK: every record keyed k0, read by all-keys or key streams (nchan: channel k0).
      # shellcheck disable=SC2046
      run WH-all gateway $(path_args all1) --connections 4 --streams 256 --rate 100 --http1 true
      # shellcheck disable=SC2046
      run WH-key gateway $(path_args key) --connections 4 --streams 256 --rate 100 --http1 true
      # shellcheck disable=SC2046
      run WH-key nchan $(path_args key) --connections 4 --streams 256 --rate 100 --http1 true
      ;;
    WM) both WM --url URL_FANOUT --publish PUB_FANOUT --connections 16 --streams 256 --rate 800 --after 60 ;;
    W9)
      run W9 gateway --url URL_KEYS --mix URL_KEYS_ALL --keys 4096 --connections "${W9_CONNECTIONS:-200}" \
        --streams 256 --publish PUB_KEYS --rate "${W9_RATE:-10}" --warmup 10 \
        --restart RESTART_URL --new-pid NEW_PID --new-metrics NEW_METRICS
      run W9-outage gateway --url URL_KEYS --mix URL_KEYS_ALL --keys 4096 --connections 40 \
        --streams 256 --publish PUB_KEYS --rate 20 --warmup 10 \
        --restart RESTART_URL --new-pid NEW_PID_STOPPED --new-metrics NEW_METRICS --outage 30
      ;;
    *) say "unknown workload $1 ($WORKLOADS)"; exit 2 ;;
  esac
}

if [ "$mode" = only ]; then
  [ ${#compared[@]} -gt 0 ] || { say "only needs workload names ($WORKLOADS)"; exit 2; }
  for w in "${compared[@]}"; do workload "$w"; done
  "$BENCH" report "$results"
  exit 0
fi

if [ "$mode" = profile ]; then
  command -v perf >/dev/null || { say "profiles need perf (Debian: linux-perf)"; exit 1; }
  [ ${#profiled[@]} -gt 0 ] || profiled=("${ALL_PROFILES[@]}")
  for p in "${profiled[@]}"; do profile "$p"; done
  write_profiles "${profiled[@]}"
  exit 0
fi

if [ "$mode" = compare ]; then
  [ ${#compared[@]} -gt 0 ] || { say "compare needs NAME=BINARY arguments"; exit 2; }
  for spec in "${compared[@]}"; do
    [ -x "${spec#*=}" ] || { say "not an executable: ${spec#*=}"; exit 2; }
  done
  built=$GW_BIN
  for rep in $(seq 1 "${BENCH_REPS:-3}"); do
    for shape in ${BENCH_COMPARE:-4:100 16:100}; do
      conns=${shape%%:*}
      rate=${shape#*:}
      for path in ${BENCH_PATHS:-all}; do
        # The key pair compares key streams with all-keys streams of the same keyed records.
        case "$path" in
          key) paths="all1 key" ;;
          *) paths=$path ;;
        esac
        for p in $paths; do
          streams=256
          case "$p" in
            all) name=W2 ;;
            all1) name=WK-all ;;
            key) name=WK-key ;;
            keys) name=W3 ;;
            # W8's shape: 100 key streams on CONNECTIONS connections, and the 10 all-keys ones.
            ingest) name=W8; streams=$((100 / conns)) ;;
            churn) name=W4 ;;
            *) say "unknown path $p (all key keys ingest churn)"; exit 2 ;;
          esac
          for spec in "${compared[@]}"; do
            GW_BIN="${spec#*=}"
            # shellcheck disable=SC2046
            run "$name-${spec%%=*}" gateway $(path_args "$p") --connections "$conns" --streams "$streams" --rate "$rate"
          done
        done
      done
      # nchan beside them, where it can do the same work (W8 has no nchan run).
      case " ${BENCH_PATHS:-all} " in
        *" all "*|*" key "*)
          # shellcheck disable=SC2046
          run W2 nchan $(path_args all) --connections "$conns" --streams 256 --rate "$rate" ;;
      esac
      case " ${BENCH_PATHS:-all} " in
        *" keys "*)
          # shellcheck disable=SC2046
          run W3 nchan $(path_args keys) --connections "$conns" --streams 256 --rate "$rate" ;;
      esac
    done
  done
  GW_BIN=$built
  "$BENCH" report "$results"
  exit 0
fi

if [ "$mode" = smoke ]; then
  both W2 --url URL_FANOUT --publish PUB_FANOUT --connections 1 --streams 16 --rate 50
  # Both servers delivered, in order, nothing lost.
  "$BENCH" report "$results"
  awk -F'"events":' 'NF > 1 { split($2, a, ","); if (a[1] + 0 == 0) bad = 1 } END { exit bad }' "$results" ||
    { say "a server delivered no events"; exit 1; }
  if grep -Eq '"(lost|duplicates)":[1-9]' "$results"; then say "events lost or duplicated"; exit 1; fi
  say "smoke run OK"
  exit 0
fi

for w in W1 W2 W3 W4 W5 W6 W7 WK WH W8 WS WM W9; do workload "$w"; done

gw_stop
write_report
if [ "${BENCH_PERF:-1}" != 0 ] && command -v perf >/dev/null; then
  results="$DATA/profiled.json"
  : >"$results"
  for p in "${ALL_PROFILES[@]}"; do profile "$p"; done
  write_profiles "${ALL_PROFILES[@]}"
fi
