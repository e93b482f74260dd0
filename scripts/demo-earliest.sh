#!/usr/bin/env bash
# Time to the first event of `?from=earliest` on a demo gateway whose topic is full.
#
#   scripts/demo-earliest.sh [BINARY] [FILL_SECS] [TICKS_PER_SEC]
#
# Runs BINARY (default target/release/kafka-sse-gateway) in demo mode at TICKS_PER_SEC ticks
# per symbol (default 50) for FILL_SECS (default 300: the mock cluster's 5 MiB per partition is
# then full at 50), prints the gateway's CPU over the next 10 s, then asks for
# /stock-prices/GOOG?from=earliest three times and prints the seconds to the first `data:`
# line of each (60 s at most). Uses two free ports picked at random; stops the gateway at the end.
set -euo pipefail
bin=${1:-target/release/kafka-sse-gateway}
fill=${2:-300}
ticks=${3:-50}
port=$((20000 + RANDOM % 10000))
admin=$((port + 1))
env -i PATH="$PATH" KSG_LISTEN="127.0.0.1:$port" KSG_ADMIN_LISTEN="127.0.0.1:$admin" \
  KSG_DEMO_TICKS_PER_SEC="$ticks" "$bin" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep "$fill"
ticks0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
sleep 10
ticks1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
hz=$(getconf CLK_TCK)
echo "gateway CPU over 10 s after ${fill} s at $ticks ticks/s: $(( (ticks1 - ticks0) * 100 / hz / 10 ))% of a core"
for try in 1 2 3; do
  start=$(date +%s.%N)
  first=$(timeout 60 curl -s -N -k "https://127.0.0.1:$port/stock-prices/GOOG?from=earliest" | grep -m1 '^data:' | head -c 60 || true)
  end=$(date +%s.%N)
  echo "try $try: $(echo "$end - $start" | bc) s to the first event: ${first:-(none)}"
done
