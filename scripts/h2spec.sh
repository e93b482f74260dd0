#!/usr/bin/env bash
# HTTP/2 conformance: h2spec (pinned) against the gateway's TLS listener and its h2c listener.
#
#   KSG_BIN=path/to/kafka-sse-gateway scripts/h2spec.sh
#
# Installs h2spec v2.2.1 with `go install` if missing (into GOBIN, or GOPATH/bin), starts the
# gateway binary ($KSG_BIN, default target/debug/kafka-sse-gateway) in demo mode on free ports
# of 127.0.0.1, once with KSG_TLS=on and once with KSG_TLS=off, and runs every h2spec case
# against each. Fails unless every case passes or the failures are listed, with a reason, in
# scripts/h2spec-allowlist.txt. H2SPEC_RUNS=n repeats the whole run n times (default 1).
#
# The path is `/`, the demo starter page: h2spec first reads a whole response to learn its
# length, and an SSE stream (`/stock-prices`) never ends, so h2spec would wait forever.
set -euo pipefail
cd "$(dirname "$0")/.."

H2SPEC_VERSION=v2.2.1+incompatible
BIN=${KSG_BIN:-target/debug/kafka-sse-gateway}
RUNS=${H2SPEC_RUNS:-1}
ALLOWLIST=scripts/h2spec-allowlist.txt
WORK=$(mktemp -d /tmp/ksg-h2spec.XXXXXX)

[ -x "$BIN" ] || { echo "no gateway binary at $BIN (set KSG_BIN, or cargo build)" >&2; exit 1; }

bin_dir=${GOBIN:-$(go env GOPATH 2>/dev/null)/bin}
H2SPEC=$bin_dir/h2spec
if ! go version -m "$H2SPEC" 2>/dev/null | grep -q "summerwind/h2spec[[:space:]]*$H2SPEC_VERSION"; then
  echo "installing h2spec $H2SPEC_VERSION into $bin_dir"
  GOBIN=$bin_dir go install "github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION"
fi

gateway_pid=
stop_gateway() {
  if [ -n "$gateway_pid" ]; then
    kill "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
    gateway_pid=
  fi
}
trap 'stop_gateway; rm -rf "$WORK"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The ids (`http2/3.5/2`) of the failed cases in a JUnit report, one a line.
failed_cases() {
  python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
for suite in ET.parse(sys.argv[1]).getroot().iter("testsuite"):
    for n, case in enumerate(suite.iter("testcase"), 1):
        if case.find("failure") is not None or case.find("error") is not None:
            print(f"{suite.get('package')}/{n}")
PY
}

# Allowed failures of one listener (`tls` or `h2c`): the ids of the allowlist's lines for it.
allowed() { grep -v '^[[:space:]]*#' "$ALLOWLIST" | awk -v l="$1" '$1 == l {print $2}' | sort -u; }
status=0
for run in $(seq "$RUNS"); do
  for tls in on off; do
    listener=tls
    [ "$tls" = off ] && listener=h2c
    port=$(free_port)
    admin=$(free_port)
    # KSG_BIN is this script's, not a gateway variable (the gateway refuses unknown KSG_*).
    env -u KSG_BIN KSG_TLS=$tls KSG_LISTEN=127.0.0.1:$port KSG_ADMIN_LISTEN=127.0.0.1:$admin \
      KSG_LOG=warn "$BIN" >"$WORK/gateway-$tls.log" 2>&1 &
    gateway_pid=$!
    for _ in $(seq 150); do
      curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
      kill -0 "$gateway_pid" 2>/dev/null || { cat "$WORK/gateway-$tls.log" >&2; exit 1; }
      sleep 0.2
    done
    flags=(-h 127.0.0.1 -p "$port" -P / -o 5 -j "$WORK/report.xml")
    [ "$tls" = on ] && flags+=(-t -k)
    rm -f "$WORK/report.xml"
    timeout 600 "$H2SPEC" "${flags[@]}" >"$WORK/h2spec-$tls.txt" 2>&1 || true
    stop_gateway
    summary=$(grep -E '^[0-9]+ tests, ' "$WORK/h2spec-$tls.txt" || echo "h2spec did not finish")
    if ! [ -f "$WORK/report.xml" ]; then
      echo "run $run, $listener: $summary" >&2
      tail -20 "$WORK/h2spec-$tls.txt" >&2
      status=1
      continue
    fi
    failed=$(failed_cases "$WORK/report.xml" | sort -u)
    unexpected=$(comm -23 <(printf '%s\n' "$failed" | sed '/^$/d') <(allowed "$listener"))
    echo "run $run, $listener: $summary${failed:+; failed: $(echo $failed)}"
    if [ -n "$unexpected" ]; then
      echo "  not allowed by $ALLOWLIST: $(echo $unexpected)"
      sed -n '/^Failures:/,$p' "$WORK/h2spec-$tls.txt"
      status=1
    fi
  done
done
exit $status
