#!/usr/bin/env bash
# End-to-end browser test of the demo starter page: real headless Chromium (Debian's
# `chromium` package) driven by playwright-core, against the built gateway binary.
#
# Installs what it needs, idempotently: the `chromium` package (apt-get) and the npm packages
# of tests/browser (npm ci). It never downloads a browser build of its own, and it does not
# build the gateway: run `cargo build` first.
#
# Environment:
#   KSG_BIN       gateway binary (default: target/debug/kafka-sse-gateway in this repo)
#   CHROMIUM_BIN  browser to drive (default: /usr/bin/chromium)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
browser_tests="$root/tests/browser"

die() {
  echo "browser-test: $*" >&2
  exit 1
}

# The gateway binary, as an absolute path (a relative KSG_BIN is taken from the caller's
# directory, before this script changes directory).
bin="${KSG_BIN:-$root/target/debug/kafka-sse-gateway}"
case "$bin" in
  /*) ;;
  *) bin="$PWD/$bin" ;;
esac
if [[ ! -x "$bin" ]]; then
  die "gateway binary not found (or not executable) at $bin: run \`cargo build\` first (this script does not build it), or set KSG_BIN"
fi
export KSG_BIN="$bin"

# Node 20+ and npm (playwright-core needs Node 20; the tests use node:test, fetch).
command -v node >/dev/null 2>&1 || die "node is not installed (Node.js 20 or newer is needed)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= 20)) || die "Node.js $(node --version) is too old: 20 or newer is needed"

# Root or sudo for apt-get.
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Chromium from Debian's packages; the package lists are refreshed only when it is missing.
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
  echo "browser-test: installing chromium (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[[ -x "$CHROMIUM_BIN" ]] || die "no Chromium at $CHROMIUM_BIN"

# npm packages: `npm ci` when node_modules is missing or does not match package-lock.json.
cd "$browser_tests"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
needs_ci() {
  [[ -f node_modules/.package-lock.json ]] || return 0
  [[ package-lock.json -nt node_modules/.package-lock.json ]] && return 0
  [[ package.json -nt node_modules/.package-lock.json ]] && return 0
  # The installed playwright-core must be the locked one.
  node -e '
    const fs = require("fs");
    const locked = JSON.parse(fs.readFileSync("package-lock.json", "utf8"))
      .packages["node_modules/playwright-core"].version;
    const installed = JSON.parse(fs.readFileSync("node_modules/playwright-core/package.json", "utf8")).version;
    process.exit(locked === installed ? 0 : 1);
  ' 2>/dev/null && return 1
  return 0
}
if needs_ci; then
  echo "browser-test: npm ci (tests/browser)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "browser-test: $("$CHROMIUM_BIN" --version 2>/dev/null | head -n1), playwright-core $(node -p 'require("playwright-core/package.json").version'), gateway $KSG_BIN"
# The tests bound every wait themselves; this outer limit only guards against the unforeseen.
# One file at a time: refusals.test.mjs runs a Kafka broker of its own.
exec timeout --kill-after=15 600 node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs
