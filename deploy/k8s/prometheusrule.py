"""Prints deploy/prometheus/rules.yaml wrapped as a Prometheus Operator PrometheusRule.

scripts/deploy-check.sh checks deploy/k8s/prometheusrule.yaml against this output (and rewrites
it with --fix), so the rules have one source.
"""
import sys

import yaml

rules = yaml.safe_load(open(sys.argv[1]))
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {
        "name": "kafka-sse-gateway",
        "labels": {"app.kubernetes.io/name": "kafka-sse-gateway"},
    },
    "spec": {"groups": rules["groups"]},
}
print("# GENERATED from deploy/prometheus/rules.yaml by scripts/deploy-check.sh --fix: edit that file.")
print("# Not in the kustomization's resources (it needs the Prometheus Operator's CRDs and usually")
print("# lives where your Prometheus looks for rules): kubectl apply -f it, or list it in an overlay.")
print(yaml.safe_dump(doc, sort_keys=False, width=100), end="")
