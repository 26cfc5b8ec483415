"""Rewrite the ConfigMap's gateproxy.yaml from deploy/gateproxy.yaml (the image's default).

Run `python tests/support/deploy/sync_configmap.py` after editing deploy/gateproxy.yaml;
tests/deploy/test_deploy.py fails while the two differ, so that the image and the cluster never
run different defaults by accident.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "deploy" / "gateproxy.yaml"
CONFIGMAP = ROOT / "deploy" / "kustomize" / "base" / "configmap.yaml"
KEY = "  gateproxy.yaml: |\n"


def main() -> None:
    text = CONFIGMAP.read_text()
    head, sep, _ = text.partition(KEY)
    if not sep:
        raise SystemExit(f"{CONFIGMAP}: no `{KEY.strip()}` line to rewrite after")
    body = "".join(f"    {line}" if line.strip() else "\n"
                   for line in SOURCE.read_text().splitlines(keepends=True))
    CONFIGMAP.write_text(head + sep + body)
    print(f"{CONFIGMAP.relative_to(ROOT)}: gateproxy.yaml = {SOURCE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
