"""Build the Kubernetes control-plane binaries (and promtool) from the Go module proxy.

Nothing ships kube-apiserver as a package, so we build it with the machine's ``go``.
``k8s.io/kubernetes`` replaces every staging module ``k8s.io/X`` with a local
directory that the module zip does not contain; a wrapper module re-points each
of them at its published ``v0.Y.Z`` twin. The version is stamped with ldflags so
``kubectl version`` and Helm's ``kubeVersion`` checks see the real version.
Results are cached under ``~/.cache/agentqueue`` and reused.

promtool (for ``promtool check rules`` / ``promtool test rules`` on the chart's
PrometheusRule) needs no wrapper: ``github.com/prometheus/prometheus`` has no local
replaces, so a plain ``go install ...@version`` builds it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

K8S_VERSION = "1.34.4"
ETCD_VERSION = "3.5.21"
K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager")
#: The node's binaries: built from the same wrapper module, cached in their own directory so
#: a control-plane-only machine never pays for them.
K8S_NODE_COMMANDS = ("kubelet", "kube-scheduler", "kube-proxy")
#: CoreDNS, built as a small custom binary holding only the plugins the node uses.
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "1.14.7"
#: Chain order of the plugins compiled in. No `forward`: the cluster DNS answers for
#: cluster.local only and can never send a query off the machine.
COREDNS_PLUGINS = ("bind", "errors", "cache", "kubernetes")
#: Prometheus 3.x is published as Go module ``v0.3MM.P`` for release ``3.MM.P``.
PROMETHEUS_VERSION = "3.16.0"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_MODULE_VERSION = "v0.316.0"
#: ``remove_all_sd`` drops the cloud service-discovery plugins (AWS, Azure, GCE, ...) that
#: promtool only needs for ``check config``; rules and their unit tests do not use them.
PROMTOOL_TAGS = "netgo,remove_all_sd"

CACHE_ROOT = Path(os.environ.get("AGENTQUEUE_CACHE", Path.home() / ".cache" / "agentqueue"))


def bin_dir() -> Path:
    return CACHE_ROOT / "bin" / f"k8s-v{K8S_VERSION}"


def node_bin_dir() -> Path:
    return CACHE_ROOT / "bin" / f"k8s-node-v{K8S_VERSION}"


def coredns_dir() -> Path:
    return CACHE_ROOT / "bin" / f"coredns-v{COREDNS_VERSION}"


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    print(f"+ {' '.join(cmd)}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=cwd, env=env, check=True, text=True, stdout=subprocess.PIPE)
    return out.stdout


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    env["GOTOOLCHAIN"] = "local"
    env["CGO_ENABLED"] = "0"
    return env


def _staging_modules(go: str, workdir: Path, env: dict[str, str]) -> list[str]:
    info = json.loads(
        _run([go, "mod", "download", "-json", f"k8s.io/kubernetes@v{K8S_VERSION}"], workdir, env)
    )
    gomod = Path(info["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, re.M)))


def _write_module(workdir: Path, module: str, requires: list[str], replaces: list[str],
                  imports: list[str]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"module {module}", "", "go 1.24.0", ""]
    lines += [f"require {r}" for r in requires]
    lines += [f"replace {r}" for r in replaces]
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")
    body = "\n".join(f'\t_ "{i}"' for i in imports)
    (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{body}\n)\n")


def build_kubernetes(go: str = "go") -> Path:
    """Build kube-apiserver and kube-controller-manager; return the directory."""
    return _build_k8s(go, K8S_COMMANDS, bin_dir(), f"k8s-v{K8S_VERSION}")


def build_kubernetes_node(go: str = "go") -> Path:
    """Build kubelet, kube-scheduler and kube-proxy; return the directory."""
    return _build_k8s(go, K8S_NODE_COMMANDS, node_bin_dir(), f"k8s-node-v{K8S_VERSION}")


def _build_k8s(go: str, commands: tuple[str, ...], out: Path, work_name: str) -> Path:
    if all((out / c).exists() for c in commands):
        return out
    env = _go_env()
    # One work module per command set: `go mod tidy` keeps only what its imports need.
    work = CACHE_ROOT / "src" / work_name
    work.mkdir(parents=True, exist_ok=True)
    minor = K8S_VERSION.split(".")[1]
    staging = _staging_modules(go, work, env)
    replaces = [f"{m} => {m} v0.{minor}.{K8S_VERSION.split('.')[2]}" for m in staging]
    _write_module(work, "agentqueue.local/k8sbins", [f"k8s.io/kubernetes v{K8S_VERSION}"],
                  replaces, [f"k8s.io/kubernetes/cmd/{c}" for c in commands])
    _run([go, "mod", "tidy"], work, env)
    pkg = "k8s.io/component-base/version"
    ldflags = " ".join([
        "-s", "-w",
        f"-X {pkg}.gitVersion=v{K8S_VERSION}",
        f"-X {pkg}.gitMajor=1",
        f"-X {pkg}.gitMinor={minor}",
        f"-X {pkg}.gitTreeState=clean",
        f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
    ])
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for c in commands:
        _run([go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp / c),
              f"k8s.io/kubernetes/cmd/{c}"], work, env)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


_COREDNS_MAIN = """package main

// A CoreDNS holding only the plugins listed below (see gobuild.COREDNS_PLUGINS).

import (
\t"github.com/coredns/coredns/core/dnsserver"
\t"github.com/coredns/coredns/coremain"
%(imports)s
)

func init() {
\tdnsserver.Directives = []string{%(directives)s}
}

func main() {
\tcoremain.Run()
}
"""


def build_coredns(go: str = "go") -> Path:
    """Build a CoreDNS with only `COREDNS_PLUGINS` compiled in; return the directory."""
    out = coredns_dir()
    if (out / "coredns").exists():
        return out
    env = _go_env()
    work = CACHE_ROOT / "src" / f"coredns-v{COREDNS_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module agentqueue.local/coredns\n\ngo 1.24.0\n\n"
        f"require {COREDNS_MODULE} v{COREDNS_VERSION}\n")
    (work / "main.go").write_text(_COREDNS_MAIN % {
        "imports": "\n".join(f'\t_ "{COREDNS_MODULE}/plugin/{p}"' for p in COREDNS_PLUGINS),
        "directives": ", ".join(f'"{p}"' for p in COREDNS_PLUGINS),
    })
    _run([go, "mod", "tidy"], work, env)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    ldflags = f"-s -w -X {COREDNS_MODULE}/coremain.GitCommit=v{COREDNS_VERSION}"
    _run([go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp / "coredns"), "."],
         work, env)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def build_static_go(name: str, source: str, out: Path, go: str = "go") -> Path:
    """Build a one-file, dependency-free Go program into the static binary `out`."""
    if out.exists():
        return out
    env = _go_env()
    work = CACHE_ROOT / "src" / name
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(f"module agentqueue.local/{name}\n\ngo 1.24.0\n")
    (work / "main.go").write_text(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    _run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], work, env)
    tmp.rename(out)
    return out


def build_etcd(go: str = "go") -> Path:
    """Build etcd (its server module uses local replaces too, so wrap it)."""
    out = CACHE_ROOT / "bin" / f"etcd-v{ETCD_VERSION}"
    if (out / "etcd").exists():
        return out
    env = _go_env()
    work = CACHE_ROOT / "src" / f"etcd-v{ETCD_VERSION}"
    mods = ["api/v3", "client/pkg/v3", "client/v3", "pkg/v3", "raft/v3", "server/v3"]
    # client/v2 lives on the v2 major line: etcd v3.5.N ships it as v2.305.N.
    patch = ETCD_VERSION.split(".")[2]
    requires = [f"go.etcd.io/etcd/{m} v{ETCD_VERSION}" for m in mods]
    requires.append(f"go.etcd.io/etcd/client/v2 v2.305.{patch}")
    _write_module(work, "agentqueue.local/etcdbins", requires, [],
                  ["go.etcd.io/etcd/server/v3"])
    _run([go, "mod", "tidy"], work, env)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    _run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "etcd"),
          "go.etcd.io/etcd/server/v3"], work, env)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def promtool_dir() -> Path:
    return CACHE_ROOT / "bin" / f"promtool-v{PROMETHEUS_VERSION}"


def build_promtool(go: str = "go") -> Path:
    """Build promtool with ``go install``; return the directory holding it."""
    out = promtool_dir()
    if (out / "promtool").exists():
        return out
    if shutil.which(go) is None:
        raise RuntimeError(f"`{go}` is not on PATH: it is needed to build promtool "
                           f"(or put a promtool in $KUBEBUILDER_ASSETS)")
    env = _go_env()
    # ``go install pkg@version`` builds outside any module: -mod does not apply.
    env["GOFLAGS"] = " ".join(f for f in env.get("GOFLAGS", "").split()
                              if not f.startswith("-mod="))
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # a partial earlier build
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    env["GOBIN"] = str(tmp)
    pkg = "github.com/prometheus/common/version"
    ldflags = " ".join([
        "-s", "-w",
        f"-X {pkg}.Version={PROMETHEUS_VERSION}",
        f"-X {pkg}.Branch=module-{PROMETHEUS_MODULE_VERSION}",
        f"-X {pkg}.BuildUser=agentqueue",
        f"-X {pkg}.BuildDate=19700101-00:00:00",
    ])
    _run([go, "install", "-trimpath", "-tags", PROMTOOL_TAGS, "-ldflags", ldflags,
          f"{PROMETHEUS_MODULE}/cmd/promtool@{PROMETHEUS_MODULE_VERSION}"], tmp, env)
    version = subprocess.run([str(tmp / "promtool"), "--version"], check=True, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
    if f"version {PROMETHEUS_VERSION}" not in version:
        raise RuntimeError(f"built promtool reports an unexpected version:\n{version}")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(build_kubernetes())
    print(build_etcd())
    print(build_promtool())
