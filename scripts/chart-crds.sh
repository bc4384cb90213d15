#!/usr/bin/env bash
# Copy the generated CRDs (crds/, rendered from the models by `agentqueue crds`) into the
# Helm chart's crds/ directory, which Helm installs before the templates.
#   scripts/chart-crds.sh          update the chart's copies
#   scripts/chart-crds.sh --check  fail if they differ (CI; tests/test_chart.py runs it too)
# The chart's crds/ also holds kopf.dev_peerings.yaml (kopf's peering CRDs), which is
# written by hand and left alone here.
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds
dst=charts/agentqueue-operator/crds
check=0
[ "${1:-}" = "--check" ] && check=1

status=0
for f in "$src"/agentqueue.io_*.yaml; do
  name=$(basename "$f")
  if [ "$check" -eq 1 ]; then
    if ! cmp -s "$f" "$dst/$name"; then
      echo "out of date: $dst/$name (run scripts/chart-crds.sh)" >&2
      status=1
    fi
  else
    cp "$f" "$dst/$name"
  fi
done
# A CRD removed from crds/ must leave the chart too.
for f in "$dst"/agentqueue.io_*.yaml; do
  [ -e "$f" ] || continue
  name=$(basename "$f")
  if [ ! -e "$src/$name" ]; then
    if [ "$check" -eq 1 ]; then
      echo "stale: $dst/$name is not in $src/" >&2
      status=1
    else
      rm "$f"
    fi
  fi
done
if [ "$check" -eq 1 ] && [ "$status" -eq 0 ]; then
  echo "$dst: in sync with $src"
fi
exit "$status"
