#!/usr/bin/env bash
# Supply-chain checks, offline, with cargo-deny (the policy is deny.toml):
#   1. the locked versions of h2, hyper, rustls and of the librdkafka that rdkafka-sys bundles are
#      at least the floors below;
#   2. cargo-deny itself, pinned, installed with `cargo install --locked` if missing;
#   3. the RustSec advisory database, from the offline copy in ../shared/advisory-db
#      (KSG_ADVISORY_DB overrides), made into what cargo-deny reads when it may not fetch: a
#      one-commit git repository under deny.toml's db-path (rebuilt only when the copy changes;
#      the copy itself is only read);
#   4. a cargo-audit-style list of the advisories that match locked crates (ignored ones too);
#   5. `cargo deny --offline check` of licenses, bans, sources and advisories: any finding fails.
#
# Run alone: bash scripts/supply-chain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

deny_version=0.20.2
db_source=${KSG_ADVISORY_DB:-../shared/advisory-db}
# Must match db-path and db-urls in deny.toml (checked below).
db_root="$HOME/.cache/kafka-sse-gateway/advisory-dbs"
db_url=https://github.com/rustsec/advisory-db
# cargo-deny 0.20 opens the database of a URL at <db-path>/<last path segment>-<hash>, the hash
# being XxHash64 (seed 0xca80de71) of the lower-cased URL, as 16 hex digits. A different
# cargo-deny version may name it differently: `cargo deny -L debug check advisories` logs the
# directory it opens ("Opening advisory database at ...").
db_dir="$db_root/advisory-db-3157b0e258782691"

step() { printf -- '--- %s\n' "$*"; }
fail() { printf 'supply-chain: %s\n' "$*" >&2; exit 1; }
started=$SECONDS

# === 1. version floors ===
# A floor is the lowest version without a known problem that matters here; Cargo.lock must not go
# below it, whatever the advisory database says.
step "version floors (Cargo.lock)"
locked_versions() {
  awk -v want="$1" '
    $1 == "[[package]]" { name = "" }
    $1 == "name" { name = $3; gsub(/"/, "", name) }
    $1 == "version" && name == want { v = $3; gsub(/"/, "", v); print v }
  ' Cargo.lock
}
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
floor_failures=0
check_floor() { # what, locked version, floor
  if version_ge "$2" "$3"; then
    printf '  %-40s %-12s >= %s\n' "$1" "$2" "$3"
  else
    printf '  %-40s %-12s <  %s  BELOW THE FLOOR\n' "$1" "$2" "$3"
    floor_failures=$((floor_failures + 1))
  fi
}
for spec in h2=0.4.16 hyper=1.5.1 rustls=0.23.45; do
  crate=${spec%%=*} floor=${spec#*=}
  versions=$(locked_versions "$crate")
  [ -n "$versions" ] || fail "$crate is not in Cargo.lock"
  for v in $versions; do check_floor "$crate" "$v" "$floor"; done
done
# rdkafka-sys is versioned <crate version>+<bundled librdkafka version>, e.g. 4.10.0+2.12.1.
versions=$(locked_versions rdkafka-sys)
[ -n "$versions" ] || fail "rdkafka-sys is not in Cargo.lock"
for v in $versions; do
  case "$v" in *+*) ;; *) fail "rdkafka-sys $v does not name its bundled librdkafka (<version>+<librdkafka>)" ;; esac
  check_floor "librdkafka (rdkafka-sys $v)" "${v#*+}" 2.10.0
done
[ "$floor_failures" = 0 ] || fail "$floor_failures locked version(s) below their floor"

# === 2. cargo-deny ===
step "cargo-deny"
have=$(cargo deny --version 2>/dev/null || true)
if [ "$have" != "cargo-deny $deny_version" ]; then
  echo "installing cargo-deny $deny_version (found: ${have:-none}); it builds from source, about 5 minutes on 2 cores"
  t=$SECONDS
  cargo install --locked "cargo-deny@$deny_version"
  echo "cargo-deny installed in $((SECONDS - t)) s"
fi
echo "using $(cargo deny --version)"
command -v git >/dev/null || fail "git is needed: cargo-deny reads the advisory database's commit time with it"

# === 3. the advisory database ===
step "advisory database"
grep -qxF "db-path = \"~/.cache/kafka-sse-gateway/advisory-dbs\"" deny.toml \
  && grep -qxF "db-urls = [\"$db_url\"]" deny.toml \
  || fail "deny.toml's db-path / db-urls are not the ones this script prepares ($db_root, $db_url)"
[ -f "$db_source/SNAPSHOT.md" ] && [ -d "$db_source/crates" ] \
  || fail "no advisory database snapshot at $db_source (expected SNAPSHOT.md and crates/)"
db_source=$(cd "$db_source" && pwd)
# SNAPSHOT.md names the upstream commit and its date: "... at commit `<sha>` (YYYY-MM-DD)".
snapshot_ref=$(tr -s ' \n' '  ' <"$db_source/SNAPSHOT.md" | grep -oE 'commit `[0-9a-f]{7,40}` \([0-9]{4}-[0-9]{2}-[0-9]{2}\)' | head -n 1 || true)
snapshot_commit=$(grep -oE '[0-9a-f]{7,40}' <<<"$snapshot_ref" | head -n 1 || true)
snapshot_date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' <<<"$snapshot_ref" || true)
if [ -z "$snapshot_date" ]; then
  # No date in SNAPSHOT.md: the newest advisory's date is a lower bound of the snapshot's.
  snapshot_date=$(grep -rhoE '^date = "[0-9]{4}-[0-9]{2}-[0-9]{2}"' "$db_source/crates" | grep -oE '[0-9-]{10}' | sort | tail -n 1)
  echo "SNAPSHOT.md gives no date; using the newest advisory's, $snapshot_date"
fi
[ -n "$snapshot_date" ] || fail "cannot tell the snapshot's date"
fingerprint="$snapshot_date $(cd "$db_source" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ -f "$db_dir/.git/ksg-source-sha256" ] && [ "$(cat "$db_dir/.git/ksg-source-sha256")" = "$fingerprint" ] \
  && [ -z "$(git -C "$db_dir" status --porcelain 2>/dev/null || echo broken)" ]; then
  echo "reusing $db_dir (same snapshot)"
else
  echo "preparing $db_dir from $db_source"
  mkdir -p "$db_root"
  rm -rf "$db_root"/.prepare.*  # left by an interrupted run
  tmp=$(mktemp -d "$db_root/.prepare.XXXXXX")
  cp -R "$db_source/." "$tmp/"
  chmod -R u+w "$tmp"
  git -C "$tmp" init -q
  git -C "$tmp" add -A
  # The commit carries the snapshot's date: cargo-deny measures the database's age from it.
  GIT_AUTHOR_DATE="${snapshot_date}T00:00:00Z" GIT_COMMITTER_DATE="${snapshot_date}T00:00:00Z" \
    git -C "$tmp" -c user.name=kafka-sse-gateway -c user.email=ksg@localhost -c commit.gpgsign=false \
    commit -q --no-verify -m "RustSec advisory database ${snapshot_commit:-snapshot} ($snapshot_date), offline copy"
  echo "$fingerprint" > "$tmp/.git/ksg-source-sha256"
  rm -rf "$db_dir"
  mv "$tmp" "$db_dir"
fi
# Without FETCH_HEAD, cargo-deny takes the later of the HEAD commit's time and .git/HEAD's mtime as
# the last fetch: keep the file at the snapshot's date too, so the age is the snapshot's.
touch -d "${snapshot_date}T00:00:00Z" "$db_dir/.git/HEAD"
age_days=$(( ($(date -u +%s) - $(date -u -d "${snapshot_date}T00:00:00Z" +%s)) / 86400 ))
# What cargo-deny loads: every crates/**/*.md but those with the placeholder id RUSTSEC-0000-0000.
advisories=$(( $(find "$db_dir/crates" -name '*.md' | wc -l) - $(grep -rlE '^id = "RUSTSEC-0000-0000"' --include='*.md' "$db_dir/crates" | wc -l || true) ))
withdrawn=$(grep -rlE '^withdrawn = ' --include='*.md' "$db_dir/crates" | wc -l || true)
echo "RustSec advisory-db ${snapshot_commit:-(commit not named)} of $snapshot_date ($age_days days old), from $db_source"
echo "$advisories crate advisories in it ($withdrawn withdrawn, which are not applied)"
if [ "$age_days" -gt 90 ]; then
  echo "WARNING: the advisory database is $age_days days old: refresh the copy in shared/ (the check fails past 365 days)"
fi

# cargo-deny runs with --offline: the crates' sources must already be there (cargo metadata reads
# their manifests). This is the ordinary download from crates.io that a build does anyway.
cargo fetch --locked --quiet

# === 4. advisories that match locked crates ===
step "advisories matching locked crates (cargo audit's list)"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
cargo deny --offline --locked --format json check --audit-compatible-output advisories >"$report" 2>/dev/null || true
python3 - "$report" <<'EOF'
import json, sys
reports = [json.loads(line) for line in open(sys.argv[1]) if line.strip().startswith("{")]
if not reports:
    print("cargo-deny gave no advisory report (the check below says why)")
    sys.exit(0)
found = []
for r in reports:
    ignored = set(r["settings"]["ignore"])
    crates = r["lockfile"]["dependency-count"]
    for v in r["vulnerabilities"]:
        found.append(("vulnerability", v, ignored))
    for kind, ws in sorted(r["warnings"].items()):
        for w in ws:
            found.append((kind, w, ignored))
for kind, f, ignored in sorted(found, key=lambda x: (x[1]["package"]["name"], x[1]["advisory"]["id"])):
    a, p = f["advisory"], f["package"]
    patched = ", ".join((f.get("versions") or {}).get("patched") or []) or "no fixed release"
    print(f"ID:       {a['id']}{'  (ignored in deny.toml)' if a['id'] in ignored else ''}")
    print(f"Crate:    {p['name']} {p['version']}")
    print(f"Kind:     {kind}")
    print(f"Title:    {a.get('title', '')}")
    print(f"Date:     {a.get('date', '')}")
    print(f"URL:      {a.get('url') or 'https://rustsec.org/advisories/' + a['id']}")
    print(f"Solution: {patched}")
    print()
n_ignored = sum(1 for _, f, i in found if f["advisory"]["id"] in i)
print(f"{len(found)} {'advisory matches' if len(found) == 1 else 'advisories match'} the {crates} crates"
      f" of the locked graph ({n_ignored} of them ignored in deny.toml)")
EOF

# === 5. the gate ===
step "cargo deny --offline check licenses bans sources advisories"
cargo deny --offline --locked check --show-stats licenses bans sources advisories
echo "supply chain: licenses, bans, sources and advisories ok ($advisories advisories of $snapshot_date checked; $((SECONDS - started)) s)"
