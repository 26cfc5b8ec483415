"""Write the production overlay's PrometheusRule from deploy/prometheus/gateproxy-alerts.yaml.

The rules file is the single source of the alerts: Prometheus without the Operator loads
it as it is, and its unit tests (gateproxy-alerts.test.yaml) run against it. Kustomize
cannot wrap a file into a custom resource's field, so this script does it: the rules
file's `groups:` (comments included) become the PrometheusRule's `spec`. Run
`python tests/support/deploy/sync_rules.py` after editing the rules file;
tests/deploy/test_alerts.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "deploy" / "prometheus" / "gateproxy-alerts.yaml"
TARGET = ROOT / "deploy" / "kustomize" / "overlays" / "production" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/gateproxy-alerts.yaml by
# `python tests/support/deploy/sync_rules.py`: edit that file, not this one.
# For the Prometheus Operator (CRD monitoring.coreos.com/v1). Your Prometheus may select
# PrometheusRules by a label such as `release: prometheus`: add it under metadata.labels.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: platform-server-gateproxy
  labels:
    app.kubernetes.io/name: platform-server
    app.kubernetes.io/component: gateproxy-admin
spec:
"""


def render() -> str:
    """The PrometheusRule as it must read, from the rules file as it is."""
    text = SOURCE.read_text()
    start = text.find("\ngroups:")
    if start < 0:
        raise SystemExit(f"{SOURCE}: no top-level `groups:` line")
    body = text[start + 1:]
    return HEADER + "".join(f"  {line}" if line.strip() else "\n"
                            for line in body.splitlines(keepends=True))


def main() -> None:
    TARGET.write_text(render())
    print(f"{TARGET.relative_to(ROOT)}: spec = {SOURCE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
