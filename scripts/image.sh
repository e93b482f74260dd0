#!/usr/bin/env bash
# Builds the container image offline with podman and checks it by running the binary inside the
# image's own file system (podman image mount + chroot), as the image's non-root user.
#
#   scripts/image.sh            # build localhost/kafka-sse-gateway:dev, then check it
#   scripts/image.sh build      # build only
#   scripts/image.sh check      # check an image built before
#
# No image registry is reachable here and Debian's rustc is too old for the crate, so:
#   - the base image is made locally with debootstrap (Debian bookworm, minbase) and imported
#     into podman as localhost/ksg-base:bookworm when it does not exist yet;
#   - the binary is built beforehand (cargo build --release) and the Dockerfile's
#     `runtime-prebuilt` stage copies it from a build context holding only that binary.
# Containers cannot be run here (the runtime refuses cgroups), hence mount + chroot for the check.
#
# Knobs: KSG_RELEASE_BIN (binary to package, default target/release/kafka-sse-gateway),
# KSG_IMAGE (default localhost/kafka-sse-gateway:dev), KSG_IMAGE_BASE (default
# localhost/ksg-base:bookworm), KSG_DEBIAN_MIRROR (default: the host's apt mirror for Debian).
# Needs root (apt-get, debootstrap, podman image mount, chroot).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${KSG_RELEASE_BIN:-$root/target/release/kafka-sse-gateway}
image=${KSG_IMAGE:-localhost/kafka-sse-gateway:dev}
base=${KSG_IMAGE_BASE:-localhost/ksg-base:bookworm}
uid=10001
pid=""  # the gateway started by check(), killed by its EXIT trap if still running

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

need_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The Debian mirror the host's apt uses (deb822 .sources or one-line .list), else the default.
debian_mirror() {
  if [[ -n ${KSG_DEBIAN_MIRROR:-} ]]; then echo "$KSG_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  if [[ -z $m ]]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }')
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# A local stand-in for debian:bookworm-slim: debootstrap minbase, documentation excluded the way
# the slim images exclude it, apt caches emptied.
make_base() {
  if podman image exists "$base"; then log "base image $base exists"; return; fi
  local dir mirror
  mirror=$(debian_mirror)
  dir=$(mktemp -d /var/tmp/ksg-base.XXXXXX)
  log "making base image $base with debootstrap from $mirror (a few minutes)"
  debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; rm -rf "$dir"; die "debootstrap failed (log: $dir.log)"; }
  cat >"$dir/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  find "$dir/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$dir"/usr/share/{man,info,locale,lintian}/* \
         "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin \
         "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >"$dir/etc/apt/sources.list.d/debian.sources"
  rm -f "$dir/etc/apt/sources.list"
  tar -C "$dir" -c . | podman import \
    --change 'CMD ["/bin/bash"]' --message "debootstrap --variant=minbase bookworm $mirror" \
    - "$base" >/dev/null
  rm -rf "$dir" "$dir.log"
  log "base image $base: $(podman image inspect --format '{{.Size}}' "$base") bytes"
}

build() {
  [[ -x $bin ]] || die "no binary at $bin (cargo build --release, or set KSG_RELEASE_BIN)"
  ldd "$bin" | grep -q 'not found' && die "$bin has unresolved libraries on this host"
  local ctx
  ctx=$(mktemp -d /var/tmp/ksg-ctx.XXXXXX)
  cp "$bin" "$ctx/kafka-sse-gateway"
  local previous
  previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  log "building $image from $bin (stage runtime-prebuilt, base $base)"
  # --format docker keeps the HEALTHCHECK (the OCI image format has no field for it). No
  # creation-date label: it would defeat the layer cache (the image config has the date anyway).
  podman build --isolation=chroot --pull=never --format docker \
    -f "$root/deploy/Dockerfile" --target runtime-prebuilt \
    --build-arg BASE="$base" \
    --label org.opencontainers.image.revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$image" "$ctx" >&2 || { rm -rf "$ctx"; die "podman build failed"; }
  rm -rf "$ctx"
  # The image this build replaced, now untagged: removed unless something else still uses it.
  if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$image")" ]]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  log "image $image: $(podman image inspect --format '{{.Size}}' "$image") bytes"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs the packaged binary from the image's file system, as the image's user, in demo mode (no
# KSG_KAFKA_BROKERS), and checks the health endpoints, a stream and a clean SIGTERM exit.
check() {
  podman image exists "$image" || die "no image $image"
  local user mnt port admin out rc ver
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  [[ $user == "$uid:$uid" ]] || die "image user is '$user', want $uid:$uid"
  mnt=$(podman image mount "$image")
  out=$(mktemp /tmp/ksg-image-check.XXXXXX)
  # shellcheck disable=SC2064
  trap "set +e; [[ -n \$pid ]] && kill -9 \$pid 2>/dev/null; umount '$mnt/dev' '$mnt/proc' 2>/dev/null; podman image unmount '$image' >/dev/null; rm -f '$out' '$out.log'" EXIT
  mount -t proc proc "$mnt/proc"
  mount --bind /dev "$mnt/dev"
  log "libraries inside the image:"
  chroot "$mnt" ldd /usr/local/bin/kafka-sse-gateway >&2 || die "ldd in the image failed"
  chroot "$mnt" ldd /usr/local/bin/kafka-sse-gateway | grep -q 'not found' \
    && die "the image lacks a library the binary needs"
  port=$(free_port); admin=$(free_port)
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin KSG_LISTEN=127.0.0.1:$port \
    KSG_ADMIN_LISTEN=127.0.0.1:$admin KSG_LOG=info \
    chroot --userspec=$uid:$uid "$mnt" /usr/local/bin/kafka-sse-gateway >"$out.log" 2>&1 &
  pid=$!
  log "gateway running in the image as $uid:$uid (pid $pid), SSE 127.0.0.1:$port, admin 127.0.0.1:$admin"
  local code=""
  for _ in $(seq 1 60); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/healthz" || true)
    [[ $code == 200 ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$out.log" >&2; die "the gateway exited"; }
    sleep 0.5
  done
  [[ $code == 200 ]] || { cat "$out.log" >&2; die "/healthz answered '$code'"; }
  log "/healthz 200"
  for _ in $(seq 1 60); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz" || true)
    [[ $code == 200 ]] && break
    sleep 0.5
  done
  [[ $code == 200 ]] || { cat "$out.log" >&2; die "/readyz answered '$code'"; }
  log "/readyz 200"
  rc=0
  ver=$(curl -sk --http2 -N --max-time 10 -o "$out" -w '%{http_version}' \
          "https://127.0.0.1:$port/stock-prices") || rc=$?
  # 28: the stream was still open when --max-time ended it, as an SSE stream should be.
  [[ $rc == 0 || $rc == 28 ]] || die "curl on the stream failed with exit code $rc"
  [[ $ver == 2 ]] || die "the stream was served over HTTP/$ver, not HTTP/2"
  grep -q '^data:' "$out" || { cat "$out" >&2; die "the stream delivered no event in 10 s"; }
  log "stream /stock-prices over HTTP/2: $(grep -c '^data:' "$out") events in 10 s, first: $(grep -m1 '^data:' "$out")"
  # Read whole, then looked at: `curl | grep -q` fails under pipefail when grep stops reading
  # before curl has written everything (curl then exits 23).
  local metrics
  metrics=$(curl -sf "http://127.0.0.1:$admin/metrics") || die "/metrics did not answer"
  [[ $'\n'$metrics == *$'\n'ksg_events_sent_total* ]] || die "/metrics has no ksg_events_sent_total"
  log "/metrics served"
  kill -TERM "$pid"
  rc=0
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { tail -20 "$out.log" >&2; die "the gateway still runs 30 s after SIGTERM"; }
  wait "$pid" || rc=$?
  pid=""
  [[ $rc == 0 ]] || { tail -20 "$out.log" >&2; die "the gateway exited with $rc after SIGTERM"; }
  log "SIGTERM: exited 0"
  log "OK: $image runs as $uid:$uid with the image's own libraries"
}

[[ $(id -u) == 0 ]] || die "needs root"
case ${1:-all} in
  build) need_tools; make_base; build ;;
  check) need_tools; check ;;
  all) need_tools; make_base; build; check ;;
  *) echo "usage: $0 [build|check|all]" >&2; exit 2 ;;
esac
