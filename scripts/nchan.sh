#!/usr/bin/env bash
# nchan.sh — nginx + the nchan pub/sub module on 127.0.0.1, the peer for side-by-side
# benchmarks of the gateway: subscribers get Server-Sent Events over TLS + HTTP/2, publishers
# POST plain HTTP. Uses Debian's packages (nginx, libnginx-mod-nchan); its own config, pid
# file, logs, temp dirs and a self-signed certificate all live in one data dir, so nothing
# under /etc/nginx or /var is used (the system nginx service is never started).
#
# Usage: scripts/nchan.sh start|stop|status|pid|pids
#   start    install the packages if missing (apt-get), write the config and a certificate
#            (once; renewed when it expires within a day), start nginx and wait until both
#            listeners answer. Idempotent.
#   stop     SIGTERM (fast shutdown), wait, then SIGKILL master and workers if needed.
#            OK if not running.
#   status   exit 0 "running pid N: subscribe https://127.0.0.1:PORT/sub/<channel> ...",
#            or exit 1 "not running".
#   pid      print the nginx master pid (exit 1 if not running).
#   pids     print the master and worker pids, one a line (for CPU and RSS from /proc).
#
# Endpoints (channel ids are \w+):
#   GET  https://127.0.0.1:NCHAN_PORT/sub/<channel>   EventSource (TLS, HTTP/2 via ALPN h2,
#        up to 256 concurrent streams per connection; no subscriber timeout). New
#        subscribers start at the newest message, like the gateway's default; a
#        Last-Event-ID header (or ?last_event_id=) resumes from the message buffer. Clients
#        must send "Accept: text/event-stream" (nchan answers 403 without it). A stream opens
#        with the comment ": hi"; event ids are "<unix seconds>:<n-th message in that second>".
#   POST http://127.0.0.1:NCHAN_PUB_PORT/pub/<channel>  body = event data. The channel keeps
#        its last 1000 messages for up to 5 minutes (compare the gateway's replay ring).
#
# Environment:
#   NCHAN_DATA            data dir: nginx.conf, cert.pem/key.pem, nginx.pid, error.log,
#                         temp dirs (default /tmp/ksg-nchan)
#   NCHAN_PORT            TLS + HTTP/2 subscriber listener port (default 8743)
#   NCHAN_PUB_PORT        plain HTTP publisher listener port (default 8780)
#   NCHAN_WORKERS         nginx worker_processes (default 2, the machine's cores)
#   NCHAN_MODULE          path of ngx_nchan_module.so (default: found from nginx -V and
#                         /etc/nginx/modules-enabled)
#   NCHAN_START_TIMEOUT   seconds to wait for the listeners (default 20)
#   NCHAN_CERT, NCHAN_KEY PEM certificate chain and key to serve (default: a self-signed one
#                         made in the data dir); a benchmark gives both servers the same one
set -euo pipefail

HOST=127.0.0.1
DATA="${NCHAN_DATA:-/tmp/ksg-nchan}"
PORT="${NCHAN_PORT:-8743}"
PUB_PORT="${NCHAN_PUB_PORT:-8780}"
WORKERS="${NCHAN_WORKERS:-2}"
TIMEOUT="${NCHAN_START_TIMEOUT:-20}"
CERT="${NCHAN_CERT:-$DATA/cert.pem}"
KEY="${NCHAN_KEY:-$DATA/key.pem}"
CONF="$DATA/nginx.conf"
PIDFILE="$DATA/nginx.pid"
LOGFILE="$DATA/error.log"

say() { echo "nchan: $*"; }
die() { echo "nchan: error: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Runs a command as root: directly, or through sudo when this script isn't root.
as_root() {
  if ((EUID == 0)); then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

# Prints the path of ngx_nchan_module.so, or fails.
find_module() {
  local dir snippet rel c
  if [[ -n "${NCHAN_MODULE:-}" ]]; then
    [[ -f "$NCHAN_MODULE" ]] && { echo "$NCHAN_MODULE"; return 0; }
    return 1
  fi
  local -a cands=()
  dir="$(nginx -V 2>&1 | sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p')" || true
  [[ -n "$dir" ]] && cands+=("$dir/ngx_nchan_module.so")
  # Debian's snippet: "load_module modules/ngx_nchan_module.so;" (relative to the prefix).
  for snippet in /etc/nginx/modules-enabled/*nchan*.conf /usr/share/nginx/modules-available/*nchan*.conf; do
    [[ -f "$snippet" ]] || continue
    rel="$(sed -n 's/^[[:space:]]*load_module[[:space:]]\{1,\}\([^;]*\);.*/\1/p' "$snippet" | head -n 1)"
    [[ -z "$rel" ]] && continue
    if [[ "$rel" == /* ]]; then cands+=("$rel"); else cands+=("/usr/share/nginx/$rel" "/etc/nginx/$rel"); fi
  done
  cands+=(/usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so)
  for c in "${cands[@]}"; do
    [[ -f "$c" ]] && { readlink -f "$c"; return 0; }
  done
  return 1
}

installed() { nginx -V >/dev/null 2>&1 && find_module >/dev/null; }

install_packages() {
  installed && return 0
  command -v apt-get >/dev/null || die "nginx with the nchan module is not installed and there is no apt-get"
  say "installing nginx and libnginx-mod-nchan (apt-get)"
  # Keep the package's postinst from starting the system nginx service on port 80: add a
  # policy-rc.d that denies service starts for the duration, unless one is there already.
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e "$policy" ]]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy" && added=1
  fi
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    nginx libnginx-mod-nchan >"${TMPDIR:-/tmp}/nchan-apt.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    # Package lists may be missing or stale (a fresh machine): update once and retry.
    as_root apt-get update >>"${TMPDIR:-/tmp}/nchan-apt.log" 2>&1 || true
    rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      nginx libnginx-mod-nchan >>"${TMPDIR:-/tmp}/nchan-apt.log" 2>&1 || rc=$?
  fi
  ((added)) && as_root rm -f "$policy"
  if ((rc != 0)); then
    tail -n 20 "${TMPDIR:-/tmp}/nchan-apt.log" >&2
    die "apt-get install nginx libnginx-mod-nchan failed (log: ${TMPDIR:-/tmp}/nchan-apt.log)"
  fi
  installed || die "packages installed but nginx -V fails or ngx_nchan_module.so was not found"
}

nginx_version() { nginx -v 2>&1 | sed -n 's#.*nginx/\([0-9][0-9.]*\).*#\1#p'; }
nchan_version() { dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown; }

# True if nginx version $1 is at least $2 (dotted numbers).
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]; }

# Prints the pid if the pid file names a live nginx master running our config.
live_pid() {
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "nginx: master process.*$CONF" || return 1
  echo "$pid"
}

# Pids whose parent is $1 (nginx workers of a master), from /proc.
children() {
  local d line rest ppid
  for d in /proc/[0-9]*; do
    line="$(cat "$d/stat" 2>/dev/null)" || continue
    rest="${line##*) }"          # fields after "pid (comm) "
    read -r _ ppid _ <<<"$rest"  # state ppid ...
    [[ "$ppid" == "$1" ]] && echo "${d#/proc/}"
  done
  return 0
}

# Ports of the running server (from its config), falling back to the configured ones.
running_port() {
  local p
  p="$(sed -n "s#^ *listen $HOST:\([0-9]*\) ssl.*#\1#p" "$CONF" 2>/dev/null | head -n 1)"
  echo "${p:-$PORT}"
}
running_pub_port() {
  local p
  p="$(sed -n "s#^ *listen $HOST:\([0-9]*\);.*#\1#p" "$CONF" 2>/dev/null | head -n 1)"
  echo "${p:-$PUB_PORT}"
}

endpoints() {
  echo "subscribe https://$HOST:$(running_port)/sub/<channel> (TLS, h2), publish http://$HOST:$(running_pub_port)/pub/<channel>"
}

# Self-signed P-256 certificate for 127.0.0.1; made once, renewed when it expires within a day.
write_cert() {
  if [[ -n "${NCHAN_CERT:-}" ]]; then return 0; fi
  if [[ -f "$DATA/cert.pem" && -f "$DATA/key.pem" ]] &&
    openssl x509 -checkend 86400 -noout -in "$DATA/cert.pem" >/dev/null 2>&1; then return 0; fi
  command -v openssl >/dev/null || die "openssl is required to make the TLS certificate"
  say "making a self-signed certificate for $HOST in $DATA"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$DATA/key.pem" -out "$DATA/cert.pem" >"$DATA/openssl.log" 2>&1 ||
    { cat "$DATA/openssl.log" >&2; die "openssl could not make the certificate"; }
  chmod 600 "$DATA/key.pem"
}

# worker_rlimit_nofile: 300000, or the hard limit when this process can't raise it that far
# (no CAP_SYS_RESOURCE, e.g. in a container): nginx's setrlimit would fail with an alert.
nofile_limit() {
  local want=300000 hard
  if (ulimit -n "$want") 2>/dev/null; then echo "$want"; return 0; fi
  hard="$(ulimit -Hn)"
  if [[ "$hard" =~ ^[0-9]+$ ]] && ((hard < want)); then echo "$hard"; else echo "$want"; fi
}

write_conf() {
  local module=$1 nofile=$2 listen_h2 http2_on=""
  # nginx 1.25.1 moved HTTP/2 from a listen parameter to the "http2 on;" directive.
  if version_ge "$(nginx_version)" 1.25.1; then
    listen_h2="listen $HOST:$PORT ssl;"; http2_on="http2 on;"
  else
    listen_h2="listen $HOST:$PORT ssl http2;"
  fi
  mkdir -p "$DATA/tmp"
  cat >"$CONF" <<EOF
# Written by scripts/nchan.sh; rewritten on every start.
load_module $module;

worker_processes $WORKERS;
worker_rlimit_nofile $nofile;
pid $PIDFILE;
error_log $LOGFILE warn;

events {
  worker_connections 100000;
}

http {
  access_log off;
  default_type application/octet-stream;

  client_body_temp_path $DATA/tmp/client_body;
  proxy_temp_path $DATA/tmp/proxy;
  fastcgi_temp_path $DATA/tmp/fastcgi;
  uwsgi_temp_path $DATA/tmp/uwsgi;
  scgi_temp_path $DATA/tmp/scgi;

  # Publish bodies stay in memory (no temp files) up to this size.
  client_body_buffer_size 64k;
  client_max_body_size 1m;

  # Long-lived streams: an HTTP/2 connection with open streams is never idle, and these keep
  # nginx from closing quiet connections or slow readers during a benchmark.
  keepalive_timeout 3600s;   # idle connections (HTTP/2 too, since 1.19.7 it replaces http2_idle_timeout)
  keepalive_requests 1000000; # streams per HTTP/2 connection over its life (default 1000)
  send_timeout 600s;         # a stalled write to a subscriber
  client_header_timeout 600s;
  client_body_timeout 600s;

  nchan_max_reserved_memory 512M;
  nchan_message_buffer_length 1000;
  nchan_message_timeout 5m;

  # Subscribers: EventSource over TLS + HTTP/2.
  server {
    $listen_h2
    $http2_on
    http2_max_concurrent_streams 256;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:nchan_ssl:10m;

    location ~ ^/sub/(\w+)\$ {
      nchan_subscriber eventsource;
      nchan_channel_id \$1;
      nchan_subscriber_timeout 0;
      nchan_subscriber_first_message newest;
    }
    location / { return 404; }
  }

  # Publishers: plain HTTP/1.1.
  server {
    listen $HOST:$PUB_PORT;

    location ~ ^/pub/(\w+)\$ {
      nchan_publisher;
      nchan_channel_id \$1;
    }
    location / { return 404; }
  }
}
EOF
}

# Ready when the master is alive and both listeners accept connections.
wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) pid
  while ((SECONDS < deadline)); do
    if pid="$(live_pid)" && port_open "$(running_port)" && port_open "$(running_pub_port)"; then
      return 0
    fi
    sleep 0.2
  done
  tail -n 20 "$LOGFILE" >&2 2>/dev/null || true
  cmd_stop >&2   # don't leave a half-started server behind
  die "nginx not ready after ${TIMEOUT}s (log: $LOGFILE)"
}

cmd_start() {
  local pid module nofile
  if pid="$(live_pid)"; then
    say "already running pid $pid: $(endpoints)"
    return 0
  fi
  rm -f "$PIDFILE"
  for p in "$PORT" "$PUB_PORT"; do port_open "$p" && die "port $p on $HOST is already in use by another process"; done
  install_packages
  module="$(find_module)" || die "ngx_nchan_module.so not found (set NCHAN_MODULE)"
  mkdir -p "$DATA"
  write_cert
  nofile="$(nofile_limit)"
  ((nofile >= 300000)) || say "open files limited to $nofile per process here (hard limit; 300000 wanted)"
  write_conf "$module" "$nofile"
  # -e: errors before the config's error_log takes over go to our log, not the built-in path.
  if ! nginx -t -q -c "$CONF" -p "$DATA" -e "$LOGFILE" >"$DATA/configtest.log" 2>&1; then
    cat "$DATA/configtest.log" >&2
    die "nginx rejected $CONF"
  fi
  nginx -c "$CONF" -p "$DATA" -e "$LOGFILE" >"$DATA/start.log" 2>&1 ||
    { cat "$DATA/start.log" >&2; tail -n 20 "$LOGFILE" >&2 2>/dev/null || true; die "nginx failed to start (log: $LOGFILE)"; }
  wait_ready
  say "nginx $(nginx_version) + nchan $(nchan_version) ready, pid $(live_pid): $(endpoints)"
}

cmd_stop() {
  local pid workers
  if ! pid="$(live_pid)"; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  workers="$(children "$pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid did not stop within 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Workers exit with the master; kill any that linger (only those this master started).
  for w in $workers; do
    for _ in $(seq 1 25); do kill -0 "$w" 2>/dev/null || break; sleep 0.2; done
    tr '\0' ' ' 2>/dev/null <"/proc/$w/cmdline" | grep -q '^nginx: ' && kill -KILL "$w" 2>/dev/null
    true
  done
  rm -f "$PIDFILE"
  say "stopped pid $pid"
}

cmd_status() {
  local pid
  if pid="$(live_pid)"; then echo "running pid $pid: $(endpoints)"; else echo "not running"; exit 1; fi
}

cmd_pid() {
  live_pid || { echo "nchan: not running" >&2; exit 1; }
}

cmd_pids() {
  local pid
  pid="$(live_pid)" || { echo "nchan: not running" >&2; exit 1; }
  echo "$pid"
  children "$pid"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  pid) cmd_pid ;;
  pids) cmd_pids ;;
  *) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2 ;;
esac
