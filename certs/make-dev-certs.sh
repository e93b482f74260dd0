#!/usr/bin/env bash
# make-dev-certs.sh — a local development CA and a server certificate signed by it, so
# browsers and curl can reach the gateway over https://localhost without -k or warnings.
#
# Usage: certs/make-dev-certs.sh [--force] [DIR]
#   DIR      where to write the files (default: certs/dev next to this script)
#   --force  re-issue the server certificate and key even if they exist (the CA is kept)
#
# Writes into DIR:
#   ca.key      CA private key (PKCS#8 PEM, 0600) — anyone holding it can mint certificates
#               your machine trusts once ca.pem is trusted: never share or commit it
#   ca.pem      CA certificate, valid ~10 years — the file to trust
#   server.key  server private key (PKCS#8 PEM, 0600)  -> KSG_TLS_KEY
#   server.pem  server certificate, leaf only, 825 days -> KSG_TLS_CERT
#
# Idempotent: an existing CA is always kept (a CA you trusted stays trusted); the server
# certificate is issued only when missing, when it no longer verifies against ca.pem
# (expired, or the CA was replaced), or with --force.
#
# Environment:
#   KSG_DEV_CERT_NAMES  extra subjectAltNames, comma-separated, e.g. "gw.local,10.0.0.5";
#                       IPv4/IPv6 addresses become IP entries, anything else DNS entries.
#                       Always included: DNS:localhost, IP:127.0.0.1, IP:::1.
#
# Needs only openssl (OpenSSL 1.1.1+ or 3.x; LibreSSL should work too).
set -euo pipefail

CA_DAYS=3650
SERVER_DAYS=825 # the most Apple platforms accept for a TLS server certificate

warn() { echo "make-dev-certs: warning: $*" >&2; }
die() {
  echo "make-dev-certs: error: $*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }

force=0
dir=""
while (($#)); do
  case "$1" in
    --force | -f) force=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      (($# <= 1)) || die "more than one directory given"
      dir="${1:-}"
      break
      ;;
    -*) die "unknown option $1 (try --help)" ;;
    *)
      [[ -z "$dir" ]] || die "more than one directory given: $dir, $1"
      dir="$1"
      ;;
  esac
  shift
done

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"

# How to show a path to the user: relative to the current directory when inside it.
show() {
  local p="$1"
  case "$p" in
    "$PWD"/*) echo "${p#"$PWD"/}" ;;
    *) echo "$p" ;;
  esac
}

# A random positive 128-bit serial: a re-issued certificate never repeats a serial
# (Firefox refuses two certificates with the same issuer and serial).
serial() { echo "0x$(openssl rand -hex 16)"; }

new_key() { # PKCS#8 PEM, RSA 2048, created 0600
  (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null) ||
    die "cannot generate a key"
  chmod 600 "$1"
}

fingerprint() { openssl x509 -noout -fingerprint -sha256 -in "$1" | sed 's/^.*=//'; }

# Public key of a certificate and of a private key, to check that they belong together.
cert_pub() { openssl x509 -noout -pubkey -in "$1" 2>/dev/null; }
key_pub() { openssl pkey -pubout -in "$1" 2>/dev/null; }

# ---- subjectAltNames -------------------------------------------------------------------

is_ipv4() {
  local IFS=. o
  [[ "$1" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || return 1
  for o in $1; do ((10#$o <= 255)) || return 1; done
}
is_ipv6() { [[ "$1" == *:* && "$1" =~ ^[0-9A-Fa-f:.]+$ ]]; }
is_dns() { [[ "$1" =~ ^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$ ]]; }

# Appends $2 to the array named $1 unless already there (bash 3.2 compatible: no namerefs).
add_unique() {
  # shellcheck disable=SC2034 # e is used inside the eval
  local e
  eval 'for e in "${'"$1"'[@]}"; do if [[ "$e" == "$2" ]]; then return 0; fi; done'
  eval "$1"'+=("$2")'
}

dns_names=(localhost)
ip_names=(127.0.0.1 ::1)
extra_names=()
raw=()
[[ -z "${KSG_DEV_CERT_NAMES:-}" ]] || IFS=, read -r -a raw <<<"$KSG_DEV_CERT_NAMES"
for name in "${raw[@]+"${raw[@]}"}"; do
  name="${name#"${name%%[![:space:]]*}"}" # trim
  name="${name%"${name##*[![:space:]]}"}"
  [[ -n "$name" ]] || continue
  if [[ "$name" == \[*\] ]]; then name="${name:1:${#name}-2}"; fi # [::1] -> ::1
  if is_ipv4 "$name" || is_ipv6 "$name"; then
    add_unique ip_names "$name"
  elif is_dns "$name" && ! [[ "$name" =~ ^[0-9.]+$ ]]; then
    name="$(printf '%s' "${name%.}" | tr '[:upper:]' '[:lower:]')"
    add_unique dns_names "$name"
  else
    die "KSG_DEV_CERT_NAMES: '$name' is neither an IP address nor a DNS name"
  fi
  extra_names+=("$name")
done

# ---- files ------------------------------------------------------------------------

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${dir:-$script_dir/dev}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

CA_KEY="$dir/ca.key"
CA_PEM="$dir/ca.pem"
SRV_KEY="$dir/server.key"
SRV_PEM="$dir/server.pem"

# Scratch space inside the target directory, so files are moved (not copied) into place
# and a failure half-way never leaves a half-written key or certificate behind.
work="$(mktemp -d "$dir/.make-dev-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---- CA --------------------------------------------------------------------------------

if [[ -e "$CA_KEY" || -e "$CA_PEM" ]]; then
  [[ -f "$CA_KEY" && -f "$CA_PEM" ]] ||
    die "only one of $(show "$CA_KEY") and $(show "$CA_PEM") exists; refusing to replace a CA" \
      "that may be trusted. Restore the missing file, or delete both to start over."
  [[ "$(cert_pub "$CA_PEM")" == "$(key_pub "$CA_KEY")" && -n "$(key_pub "$CA_KEY")" ]] ||
    die "$(show "$CA_KEY") does not match $(show "$CA_PEM"); delete both to start over"
  openssl x509 -noout -checkend 0 -in "$CA_PEM" >/dev/null ||
    warn "the CA certificate has expired; delete $(show "$CA_KEY") and $(show "$CA_PEM") to make a new one (and trust it again)"
  chmod 600 "$CA_KEY" 2>/dev/null || warn "cannot chmod 600 $(show "$CA_KEY")"
  ca_state="kept"
else
  # A unique subject per CA (like mkcert): a new CA never looks like an old, trusted one.
  who="${USER:-$(id -un 2>/dev/null || echo user)}@$(hostname 2>/dev/null || echo host)"
  cat >"$work/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = kafka-sse-gateway development CA
OU = $who
CN = ksg dev CA $who $(date -u +%Y-%m-%dT%H:%M:%SZ)
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  new_key "$work/ca.key"
  openssl req -new -x509 -sha256 -days "$CA_DAYS" -set_serial "$(serial)" \
    -config "$work/ca.cnf" -key "$work/ca.key" -out "$work/ca.pem" ||
    die "cannot create the CA certificate"
  chmod 644 "$work/ca.pem"
  mv "$work/ca.key" "$CA_KEY"
  mv "$work/ca.pem" "$CA_PEM"
  ca_state="created" # so any existing server certificate was signed by another CA
fi

# ---- server certificate ----------------------------------------------------------------

reason=""
if [[ "$ca_state" == created ]]; then
  reason="new CA"
elif ((force)); then
  reason="forced"
elif [[ ! -f "$SRV_PEM" || ! -f "$SRV_KEY" ]]; then
  reason="missing"
elif ! openssl verify -CAfile "$CA_PEM" "$SRV_PEM" >/dev/null 2>&1; then
  reason="the old one expired or was signed by another CA"
elif [[ "$(cert_pub "$SRV_PEM")" != "$(key_pub "$SRV_KEY")" ]]; then
  reason="server.key did not match server.pem"
fi

if [[ -n "$reason" ]]; then
  {
    cat <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = kafka-sse-gateway development certificate
CN = localhost
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = @alt_names
[alt_names]
EOF
    i=0
    for n in "${dns_names[@]}"; do echo "DNS.$((++i)) = $n"; done
    i=0
    for n in "${ip_names[@]}"; do echo "IP.$((++i)) = $n"; done
  } >"$work/server.cnf"
  new_key "$work/server.key"
  openssl req -new -sha256 -config "$work/server.cnf" -key "$work/server.key" \
    -out "$work/server.csr" || die "cannot create the certificate request"
  openssl x509 -req -sha256 -days "$SERVER_DAYS" -set_serial "$(serial)" \
    -in "$work/server.csr" -CA "$CA_PEM" -CAkey "$CA_KEY" \
    -extfile "$work/server.cnf" -extensions v3_server -out "$work/server.pem" 2>/dev/null ||
    die "cannot sign the server certificate"
  openssl verify -CAfile "$CA_PEM" "$work/server.pem" >/dev/null ||
    die "the new server certificate does not verify against the CA"
  chmod 644 "$work/server.pem"
  mv "$work/server.key" "$SRV_KEY"
  mv "$work/server.pem" "$SRV_PEM"
  srv_state="issued ($reason)"
else
  chmod 600 "$SRV_KEY" 2>/dev/null || warn "cannot chmod 600 $(show "$SRV_KEY")"
  srv_state="kept (use --force to re-issue)"
  # Names asked for now but missing from the kept certificate.
  for n in "${extra_names[@]+"${extra_names[@]}"}"; do
    if is_ipv4 "$n" || is_ipv6 "$n"; then opt=-checkip; else opt=-checkhost; fi
    if openssl x509 -noout "$opt" "$n" -in "$SRV_PEM" 2>/dev/null | grep -q 'does NOT match'; then
      warn "the kept server certificate does not cover '$n'; run again with --force to add it"
    fi
  done
fi

# ---- summary ---------------------------------------------------------------------------

ca_rel="$(show "$CA_PEM")"
san="$(openssl x509 -noout -text -in "$SRV_PEM" | sed -n '/Subject Alternative Name/{n;s/^ *//;p;}')"
not_after="$(openssl x509 -noout -enddate -in "$SRV_PEM" | sed 's/^notAfter=//')"

cat <<EOF
make-dev-certs: CA $ca_state: $ca_rel
  SHA-256 $(fingerprint "$CA_PEM")
make-dev-certs: server certificate $srv_state: $(show "$SRV_PEM")
  names: $san
  valid until: $not_after

Run the gateway with it:
  KSG_TLS_CERT=$(show "$SRV_PEM") KSG_TLS_KEY=$(show "$SRV_KEY") cargo run --release

Try it (no -k needed):
  curl --cacert $ca_rel -N https://localhost:8443/stock-prices/GOOG

Trust the CA ($ca_rel) once, so browsers accept the certificate:
  Debian/Ubuntu (system store; curl, most CLI tools):
    sudo cp $ca_rel /usr/local/share/ca-certificates/ksg-dev-ca.crt && sudo update-ca-certificates
  macOS (Safari, Chrome, curl):
    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain $ca_rel
  Chrome/Chromium on Linux (NSS database; certutil is in libnss3-tools):
    certutil -d sql:\$HOME/.pki/nssdb -A -t C,, -n ksg-dev-ca -i $ca_rel
  Firefox (own store on Linux): Settings > Privacy & Security > Certificates > View Certificates
    > Authorities > Import... > $ca_rel, tick "Trust this CA to identify websites"
  curl without trusting it system-wide:
    curl --cacert $ca_rel https://localhost:8443/...

Keep ca.key private: whoever has it can make certificates this machine trusts.
EOF
