#!/usr/bin/env bash
# Every offline check of deploy/: exits non-zero on the first failure.
#
#   1. promtool check rules + promtool test rules (deploy/prometheus/), promtool check config
#   2. Grafana dashboard: valid JSON, datasource variable, every panel query parses as PromQL
#   3. deploy/k8s/prometheusrule.yaml is rules.yaml wrapped for the Prometheus Operator
#   4. Kubernetes: kustomize renders deploy/k8s; kubeconform validates every object strictly
#      against Kubernetes schemas and the Prometheus Operator's CRD schema, both offline
#   5. deploy/compose.yaml loads with compose-go (the loader docker compose uses) and its spec
#   6. scripts/image.sh: image built with podman and checked by chroot (skip: DEPLOY_CHECK_IMAGE=0)
#
# Installs what it needs, idempotently: promtool (Debian package prometheus), a Python venv with
# kubernetes-validate (PyPI; ships the Kubernetes JSON schemas), kubeconform, kustomize (when
# kubectl is missing) and compose-go through the Go module proxy, podman and debootstrap (in
# image.sh). Tools are cached in ${KSG_DEPLOY_CACHE:-~/.cache/ksg-deploy-check}.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KSG_DEPLOY_CACHE:-$HOME/.cache/ksg-deploy-check}
k8s_version=1.33.0          # validated against; kubernetes-validate ships 1.x schemas
kubeconform_version=v0.8.0
kustomize_version=v5.7.1
prometheus_operator_version=v0.85.0
compose_go_version=v2.9.0
gobin=$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin
mkdir -p "$cache"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'deploy-check: FAIL: %s\n' "$*" >&2; exit 1; }

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

venv() {
  if [[ ! -x $cache/venv/bin/kubernetes-validate ]]; then
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q kubernetes-validate==1.37.0 pyyaml
  fi
  "$cache/venv/bin/python" "$@"
}

# --- 1. Prometheus rules -------------------------------------------------------------------
step "promtool: rules and their unit tests"
command -v promtool >/dev/null || apt_install prometheus
# The Debian package starts a Prometheus server where systemd runs; it is not needed here.
(systemctl disable --now prometheus >/dev/null 2>&1 || true)
promtool check rules "$root/deploy/prometheus/rules.yaml"
(cd "$root/deploy/prometheus" && promtool test rules rules.test.yaml)
promtool check config --syntax-only "$root/deploy/prometheus/prometheus.yml"

# --- 2. Grafana dashboard ------------------------------------------------------------------
step "Grafana dashboard: JSON, variables, PromQL of every panel"
exprs=$(mktemp /tmp/ksg-dashboard-rules.XXXXXX.yaml)
trap 'rm -f "$exprs"' EXIT
venv - "$root/deploy/grafana/kafka-sse-gateway.json" "$exprs" <<'PY'
import json, sys, yaml
path, out = sys.argv[1], sys.argv[2]
d = json.load(open(path))
names = [v["name"] for v in d["templating"]["list"]]
assert "datasource" in names, "no datasource variable"
rules, uids = [], set()
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
for p in walk(d["panels"]):
    if p["type"] == "row":
        continue
    assert p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']!r}: datasource is not the variable"
    assert p["id"] not in uids, f"duplicate panel id {p['id']}"
    uids.add(p["id"])
    for t in p["targets"]:
        e = (t["expr"].replace("$__rate_interval", "5m").replace("$job", "kafka-sse-gateway")
             .replace("$instance", ".*"))
        rules.append({"record": f"panel_{p['id']}_{t['refId']}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(out, "w"))
print(f"{path}: {len(uids)} panels, {len(rules)} queries, variables {names}")
PY
promtool check rules "$exprs" >/dev/null || { promtool check rules "$exprs"; fail "a dashboard query does not parse"; }
echo "every dashboard query parses as PromQL"

# --- 3. PrometheusRule in sync with rules.yaml ---------------------------------------------
step "deploy/k8s/prometheusrule.yaml matches deploy/prometheus/rules.yaml"
want=$(venv "$root/deploy/k8s/prometheusrule.py" "$root/deploy/prometheus/rules.yaml")
if [[ $want != "$(cat "$root/deploy/k8s/prometheusrule.yaml")" ]]; then
  if [[ ${1:-} == --fix ]]; then
    printf '%s\n' "$want" >"$root/deploy/k8s/prometheusrule.yaml"; echo "rewritten"
  else
    fail "deploy/k8s/prometheusrule.yaml is stale: run scripts/deploy-check.sh --fix"
  fi
fi
echo "in sync"

# --- 4. Kubernetes manifests ---------------------------------------------------------------
step "Kubernetes: kustomize build + kubeconform (offline schemas)"
[[ -x $gobin/kubeconform ]] || go install "github.com/yannh/kubeconform/cmd/kubeconform@$kubeconform_version"
rendered=$cache/k8s-rendered.yaml
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  kubectl kustomize "$root/deploy/k8s" >"$rendered"
else
  [[ -x $gobin/kustomize ]] || go install "sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version"
  "$gobin/kustomize" build "$root/deploy/k8s" >"$rendered"
fi
# Kubernetes schemas: the ones kubernetes-validate ships (no schema can be downloaded here).
# Their references point at "/api/_definitions.json" under an https $id, which its own resolver
# maps; kubeconform would try to fetch them, so a copy refers to the local file instead.
k8s_schemas=$cache/k8s-schemas
if [[ ! -f $k8s_schemas/v$k8s_version-local-strict/_definitions.json ]]; then
  src=$(venv -c 'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
  [[ -d $src/v$k8s_version-local-strict ]] || fail "kubernetes-validate has no v$k8s_version schemas"
  dst=$k8s_schemas/v$k8s_version-local-strict
  rm -rf "$dst.tmp" && mkdir -p "$dst.tmp"
  for f in "$src/v$k8s_version-local-strict"/*.json; do
    sed "s|\"/api/_definitions.json#|\"file://$dst/_definitions.json#|g" "$f" >"$dst.tmp/${f##*/}"
  done
  mv "$dst.tmp" "$dst"
fi
# CRD schemas: the Prometheus Operator's CRDs, from its Go module, turned into JSON schemas.
crd_schemas=$cache/crd-schemas/$prometheus_operator_version
if [[ ! -f $crd_schemas/podmonitor_v1.json ]]; then
  po_dir=$(cd "$cache" && GOFLAGS=-mod=mod go mod download -json \
             "github.com/prometheus-operator/prometheus-operator@$prometheus_operator_version" \
           | venv -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$crd_schemas"
  venv - "$po_dir/example/prometheus-operator-crd" "$crd_schemas" <<'PY'
import json, os, sys, yaml
src, out = sys.argv[1], sys.argv[2]
def strict(s):
    # Like openapi2jsonschema's strict mode: objects with declared properties accept no others.
    if isinstance(s, dict):
        if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
        for v in s.values():
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
    return s
for f in ("monitoring.coreos.com_podmonitors.yaml", "monitoring.coreos.com_servicemonitors.yaml",
          "monitoring.coreos.com_prometheusrules.yaml"):
    crd = yaml.safe_load(open(os.path.join(src, f)))
    kind = crd["spec"]["names"]["kind"].lower()
    for v in crd["spec"]["versions"]:
        json.dump(strict(v["schema"]["openAPIV3Schema"]), open(os.path.join(out, f"{kind}_{v['name']}.json"), "w"))
PY
fi
"$gobin/kubeconform" -strict -summary -output text -kubernetes-version "$k8s_version" \
  -schema-location "$k8s_schemas/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "$crd_schemas/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
  "$rendered" "$root/deploy/k8s/prometheusrule.yaml"
# Cross-checks a schema cannot see.
venv - "$rendered" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
dep = by_kind["Deployment"][0]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
cm = by_kind["ConfigMap"][0]["data"]
drain = int(cm.get("KSG_DRAIN_DELAY_SECS", 5)); grace = int(cm.get("KSG_SHUTDOWN_GRACE_SECS", 10))
tgps = pod["terminationGracePeriodSeconds"]
assert tgps > drain + grace, f"terminationGracePeriodSeconds {tgps} <= drain {drain} + grace {grace}"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
assert ports == {"https": 8443, "admin": 8081}, ports
names = {d["metadata"]["name"] for d in docs}
for ref in c["envFrom"]:
    n = (ref.get("configMapRef") or ref.get("secretRef"))["name"]
    assert n in names, f"envFrom names {n}, not in the base"
for v in pod["volumes"]:
    assert v["secret"]["secretName"] in names, v
sel = dep["spec"]["selector"]["matchLabels"]
for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy", "PodMonitor"):
    for d in by_kind[kind]:
        s = d["spec"].get("selector", d["spec"].get("podSelector"))
        s = s.get("matchLabels", s)
        assert s == sel, f"{kind} selects {s}, the Deployment's pods are {sel}"
assert by_kind["HorizontalPodAutoscaler"][0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
unknown = sorted(k for k in cm if k.startswith("KSG_") and not k.startswith("KSG_KAFKA_"))
print(f"cross-checks passed: terminationGracePeriodSeconds {tgps} > {drain} + {grace}; selectors, "
      f"references and probes agree; gateway settings {', '.join(unknown)}")
PY

# --- 5. Compose ----------------------------------------------------------------------------
step "compose: loaded and validated with compose-go"
tool=$cache/composecheck
if [[ ! -x $tool/composecheck ]] || ! cmp -s "$root/deploy/tools/composecheck/main.go" "$tool/main.go"; then
  mkdir -p "$tool"
  cp "$root/deploy/tools/composecheck/main.go" "$tool/main.go"
  (cd "$tool" && { [[ -f go.mod ]] || go mod init composecheck >/dev/null 2>&1; } \
     && go get "github.com/compose-spec/compose-go/v2@$compose_go_version" >/dev/null 2>&1 \
     && go mod tidy >/dev/null 2>&1 && go build -o composecheck .) || fail "building composecheck"
fi
"$tool/composecheck" "$root/deploy/compose.yaml"

# --- 6. Image ------------------------------------------------------------------------------
if [[ ${DEPLOY_CHECK_IMAGE:-1} == 1 ]]; then
  step "image: podman build (runtime-prebuilt) + chroot check"
  "$root/scripts/image.sh"
else
  step "image: skipped (DEPLOY_CHECK_IMAGE=0)"
fi

printf '\ndeploy-check: all checks passed\n'
