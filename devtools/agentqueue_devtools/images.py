"""Container images made on this machine, with no registry and no Docker engine.

- ``base``: Debian bookworm from ``debootstrap --variant=minbase`` with Debian's python3
  (3.11.2), python3-venv and ca-certificates, written as an image tarball (`ocitar`).
- ``operator``: the repository's Dockerfile, built by buildah (Debian's package, no daemon)
  with ``PYTHON_IMAGE`` = that base.
- ``redis``: Debian's redis-server on the base (images/redis/Containerfile).
- ``agent``: the operator image plus the example agent (images/agent/Containerfile,
  examples/agent/): the SDK is the operator's package, so the cheapest honest agent image
  is FROM the operator image with another entrypoint.

Each image is a docker-archive under ``~/.cache/agentqueue/images`` named by a hash of its
inputs (recipe, Dockerfile, locks, sources, parent image), so unchanged inputs skip the
build; ``ctr images import`` and ``buildah pull docker-archive:`` read them. pip inside the
build reaches the package index through the host's network; where the machine trusts an
extra CA, the host's bundle is a build secret (read-only, in the builder's pip steps only)
named by the builder stage's ``PIP_CERT`` build arg, so it never lands in a layer.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import binaries, ocitar

Progress = Callable[[str], None]

#: Bump when the way an image is made changes (invalidates every cached tarball).
RECIPE_VERSION = "3"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Files newer than this get this mtime in the base layer (reproducible bytes).
BASE_EPOCH = 1747699200  # 2025-05-20T00:00:00Z
#: Where the host's CA bundle is mounted during a build (a secret: never part of an image).
BUILD_CA_PATH = "/run/secrets/pip_cert"
#: Local names in buildah's storage; pod specs use the docker-archive's repo tags.
_LOCAL = "localhost/"
#: Tag the dev images carry inside their tarballs (what the chart and manifests name).
DEV_TAG = "dev"

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
EXAMPLES_DIR = REPO_ROOT / "examples"
_TOOLS = ("buildah", "debootstrap", "runc", "tar", "chroot")


class ImageBuildError(RuntimeError):
    """A step of an image build failed; the message names it and ends with its log's tail."""


@dataclass(frozen=True)
class ImageRef:
    """An image as a pod names it (``name``) and the tarball that holds it."""
    name: str          # repository:tag, e.g. "agentqueue-operator:dev"
    tarball: Path      # docker-archive with ``name`` as its repo tag
    input_hash: str    # sha256 of everything the image was made from

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.rsplit(":", 1)[1]

    @property
    def local(self) -> str:
        """The name in buildah's local storage (unique per input hash)."""
        return f"{_LOCAL}{self.repository}:{self.input_hash[:12]}"


def cache_dir() -> Path:
    return binaries.cache_root() / "images"


def _default_progress(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def unavailable_reason() -> str | None:
    """Why images cannot be built here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"building images needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "building images needs root (debootstrap and rootful buildah)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"missing {', '.join(missing)}: `make bootstrap` installs them "
                "(Debian packages buildah, debootstrap, runc)")
    if not (REPO_ROOT / "Dockerfile").is_file():
        return f"no Dockerfile at {REPO_ROOT}: images are built from a source checkout"
    return None


# --- inputs and hashes ---------------------------------------------------------------------

def _hash(parts: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _files(root: Path, rel: Iterable[str]) -> list[tuple[str, bytes]]:
    """(path, content) of the given repo-relative files and directories, recursively,
    leaving out what Python generates (bytecode, egg-info, build trees)."""
    out: list[tuple[str, bytes]] = []
    for name in rel:
        path = root / name
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            r = p.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(part, pat) for part in r.split("/")
                   for pat in ("__pycache__", "*.py[cod]", "*.egg-info", "build")):
                continue
            out.append((r, p.read_bytes()))
    return out


def _mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d")
    candidates = sorted(sources.glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            urls = words[1:] if words[:1] == ["URIs:"] else words[1:2] if words[:1] == ["deb"] \
                else []
            for url in urls:
                if url.rstrip("/").endswith("/debian"):
                    return url.rstrip("/")
    return DEFAULT_MIRROR


def base_recipe() -> dict[str, object]:
    return {"recipe": RECIPE_VERSION, "suite": SUITE, "variant": "minbase",
            "packages": list(BASE_PACKAGES), "mirror": _mirror(), "epoch": BASE_EPOCH}


# --- running tools -------------------------------------------------------------------------

def _run(step: str, cmd: list[str], log: Path, *, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``, appending its output to ``log``; stdout returned, ImageBuildError on
    failure with the log's tail (build logs hold paths and package names, no secrets)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True,
                             env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        f.write(out.stdout)
    if out.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise ImageBuildError(f"{step} failed (exit {out.returncode}); log {log}:\n{tail}")
    return out.stdout


def _size_mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


def _prune(prefix: str, keep: Path, keep_local: str | None = None) -> None:
    """Drop older tarballs of the same image (each is 100+ MB) and, in buildah's storage,
    older tags of it (best effort: a tag another image is built FROM stays until that one
    goes). Untagged intermediate images stay: they are the layer cache of the next build."""
    current = keep.stem.rsplit("-", 1)[-1]  # the input hash's first 12 hex digits
    # Another process may still use an older one (a test importing it, a retag): only
    # tarballs untouched for an hour go.
    stale = time.time() - 3600
    for old in cache_dir().glob(f"{prefix}-*.tar"):
        # <prefix>-<hash>.tar, or <prefix>-tag-<tag>-<hash>.tar from retag()
        if old != keep and not old.stem.endswith(f"-{current}") \
                and old.stat().st_mtime < stale:
            old.unlink(missing_ok=True)
    for old in (cache_dir() / "logs").glob(f"{prefix}-*.log"):
        if not old.stem.endswith(f"-{current}") and old.stat().st_mtime < stale:
            old.unlink(missing_ok=True)
    if keep_local is None:
        return
    listed = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
                            capture_output=True, text=True)
    for name in listed.stdout.split():
        if name.startswith(f"{_LOCAL}{prefix}:") and name != keep_local:
            subprocess.run(["buildah", "rmi", name], capture_output=True)


# --- the base ------------------------------------------------------------------------------

_BASE_SOURCES = """Types: deb
URIs: {mirror}
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {security}
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# As Debian's -slim images: no docs (but their copyright files), man pages or translations,
# now and in what a later `apt-get install` on this base adds (the redis image).
_DPKG_SLIM = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""


def _slim(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/agentqueue-slim").write_text(_DPKG_SLIM)
    for rel in ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/groff",
                "usr/share/lintian", "usr/share/linda"):
        for child in (rootfs / rel).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for path in sorted((rootfs / "usr/share/doc").rglob("*"), reverse=True):
        if path.name == "copyright" or (path.is_dir() and any(path.iterdir())):
            continue
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


# Left by debootstrap from the host or by apt, and not part of an image: the runtime
# provides hostname and resolv.conf; lists and caches are re-fetched by whoever needs them.
_BASE_DROP = ("etc/hostname", "etc/resolv.conf", "etc/apt/sources.list", "var/cache/apt",
              "var/lib/apt/lists", "var/log", "var/cache/debconf/templates.dat-old",
              "var/lib/dpkg/status-old", "etc/machine-id", "root/.bash_history",
              # ldconfig's cache of inodes and ctimes: the one file two builds disagree on
              "var/cache/ldconfig/aux-cache")


def _fix_shadow_dates(rootfs: Path) -> None:
    """The "last password change" day of every account is the build's day: use the epoch's
    (what Debian's debuerreotype does), so a rebuild on another day gives the same bytes."""
    day = str(BASE_EPOCH // 86400)
    for name in ("etc/shadow", "etc/shadow-"):
        path = rootfs / name
        if not path.is_file():
            continue
        lines = []
        for line in path.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2]:
                fields[2] = day
            lines.append(":".join(fields))
        path.write_text("\n".join(lines) + "\n")


def ensure_base(progress: Progress | None = None) -> ImageRef:
    """Debian bookworm minbase with Debian's python3, as an image tarball (cached)."""
    say = progress or _default_progress
    recipe = base_recipe()
    digest = _hash([("recipe", json.dumps(recipe, sort_keys=True).encode())])
    ref = ImageRef(f"agentqueue-base:{digest[:12]}",
                   cache_dir() / f"agentqueue-base-{digest[:12]}.tar", digest)
    if ref.tarball.is_file():
        say(f"base image {ref.name}: cached ({_size_mb(ref.tarball)})")
        return ref
    with binaries._cache_lock("images-base"):
        if ref.tarball.is_file():
            return ref
        _build_base(ref, recipe, say)
    return ref


def _build_base(ref: ImageRef, recipe: dict[str, object], say: Progress) -> None:
    work = cache_dir() / "work" / f"base-{ref.input_hash[:12]}"
    rootfs, log = work / "rootfs", cache_dir() / "logs" / f"base-{ref.input_hash[:12]}.log"
    ocitar.remove_tree(work)
    work.mkdir(parents=True)
    log.unlink(missing_ok=True)
    mirror = str(recipe["mirror"])
    start = time.monotonic()
    say(f"base image: debootstrap --variant=minbase {SUITE} from {mirror} (one-time, ~2-4 min)")
    _run("debootstrap", ["debootstrap", "--variant=minbase",
                         f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror],
         log)
    security = mirror.rsplit("/debian", 1)[0] + "/debian-security"
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
        _BASE_SOURCES.format(mirror=mirror, security=security, suite=SUITE))
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    _slim(rootfs)
    say(f"base image: debootstrap done in {time.monotonic() - start:.0f}s; "
        "applying bookworm-security/updates")
    t = time.monotonic()
    chroot_env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
                  "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    _run("apt-get update (base)", ["chroot", str(rootfs), "apt-get", "update", "-qq"], log,
         env=chroot_env)
    _run("apt-get upgrade (base)", ["chroot", str(rootfs), "apt-get", "-y", "-qq",
                                    "-o", "Dpkg::Options::=--force-confold", "upgrade"],
         log, env=chroot_env)
    _run("apt-get clean (base)", ["chroot", str(rootfs), "apt-get", "clean"], log,
         env=chroot_env)
    for rel in _BASE_DROP:
        path = rootfs / rel
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            path.unlink(missing_ok=True)
    (rootfs / "etc/machine-id").write_text("")  # systemd's "uninitialised" marker
    _fix_shadow_dates(rootfs)
    version = (rootfs / "etc/debian_version").read_text().strip()
    say(f"base image: upgraded in {time.monotonic() - t:.0f}s (Debian {version}); "
        "writing the tarball")
    layer = work / "layer.tar"
    ocitar.write_layer(rootfs, layer, mtime=BASE_EPOCH)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_EPOCH))
    config = {
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG=C.UTF-8"],
            "Cmd": ["python3"],
            "Labels": {"io.agentqueue.image.recipe": ref.input_hash,
                       "org.opencontainers.image.base.name": f"debian:{SUITE} (debootstrap)"},
        },
        "history": [{"created": created, "created_by":
                     f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} "
                     f"{SUITE}; apt-get upgrade from {SUITE}-security/-updates"}],
    }
    ref.tarball.parent.mkdir(parents=True, exist_ok=True)
    ocitar.write_docker_archive(ref.tarball, layers=[layer], config=config,
                                repo_tags=[ref.name])
    ocitar.remove_tree(work)
    _prune("agentqueue-base", ref.tarball, ref.local)
    say(f"base image {ref.name}: ready in {time.monotonic() - start:.0f}s "
        f"({_size_mb(ref.tarball)})")


# --- buildah -------------------------------------------------------------------------------

def _in_storage(local: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", local],
                          capture_output=True).returncode == 0


def load(ref: ImageRef, progress: Progress | None = None) -> str:
    """Make ``ref`` available to buildah as ``ref.local`` (from its tarball if needed)."""
    if not _in_storage(ref.local):
        (progress or _default_progress)(f"loading {ref.name} into buildah's storage")
        log = cache_dir() / "logs" / f"load-{ref.input_hash[:12]}.log"
        image_id = _run(f"buildah pull {ref.tarball.name}",
                        ["buildah", "pull", "--quiet", f"docker-archive:{ref.tarball}"],
                        log).strip().splitlines()[-1]
        _run(f"buildah tag {ref.local}", ["buildah", "tag", image_id, ref.local], log)
    return ref.local


def _host_ca_bundle() -> Path | None:
    """The CA bundle this machine's own pip trusts (may include a local extra CA)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("REQUESTS_CA_BUNDLE"),
                      os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _build(*, name: str, digest: str, containerfile: Path, context: Path,
           build_args: Callable[[], dict[str, str]], say: Progress, pip_cert: bool = False
           ) -> ImageRef:
    """buildah bud + push to a docker-archive named ``name``:dev; cached by ``digest``.
    ``build_args`` is called only for a build (it may load a parent image)."""
    ref = ImageRef(f"{name}:{DEV_TAG}", cache_dir() / f"{name}-{digest[:12]}.tar", digest)
    if ref.tarball.is_file():
        say(f"{name} image: cached ({ref.tarball.name}, {_size_mb(ref.tarball)})")
        return ref
    with binaries._cache_lock(f"images-{name}"):
        if ref.tarball.is_file():
            return ref
        log = cache_dir() / "logs" / f"{name}-{digest[:12]}.log"
        log.unlink(missing_ok=True)
        start = time.monotonic()
        say(f"{name} image: building with buildah ({containerfile.relative_to(REPO_ROOT)})")
        cmd = ["buildah", "bud", "--layers", "--pull=never", "--network=host",
               "--format=docker", "-f", str(containerfile), "-t", ref.local]
        for key, value in build_args().items():
            cmd += ["--build-arg", f"{key}={value}"]
        bundle = _host_ca_bundle() if pip_cert else None
        if bundle:
            # A build secret: mounted read-only into the builder's pip steps only, and
            # never written to a layer; the builder stage's PIP_CERT names it.
            cmd += ["--secret", f"id=pip_cert,src={bundle}",
                    "--build-arg", f"PIP_CERT={BUILD_CA_PATH}"]
        _run(f"buildah bud ({name})", [*cmd, str(context)], log)
        built = time.monotonic() - start
        tmp = ref.tarball.with_name(ref.tarball.name + ".pushed")
        tmp.unlink(missing_ok=True)
        _run(f"buildah push ({name})", ["buildah", "push", "--quiet", ref.local,
                                        f"docker-archive:{tmp}:{ref.name}"], log)
        # buildah also lists the storage name (localhost/...:<hash>); a node needs only ours.
        ocitar.retag_docker_archive(tmp, ref.tarball, [ref.name])
        tmp.unlink()
        _prune(name, ref.tarball, ref.local)
        say(f"{name} image: built in {built:.0f}s, exported in "
            f"{time.monotonic() - start - built:.0f}s ({_size_mb(ref.tarball)})")
    return ref


def ensure_operator(progress: Progress | None = None, *, base: ImageRef | None = None
                    ) -> ImageRef:
    """The operator image from the repository's Dockerfile on ``base`` (default: ours)."""
    say = progress or _default_progress
    base = base or ensure_base(say)
    inputs = _files(REPO_ROOT, ["Dockerfile", ".dockerignore", "requirements.lock",
                                "requirements-build.lock", "pyproject.toml", "README.md",
                                "clients/python", "operator"])
    digest = _hash([("recipe", RECIPE_VERSION.encode()), ("base", base.input_hash.encode()),
                    *inputs])
    return _build(name="agentqueue-operator", digest=digest,
                  containerfile=REPO_ROOT / "Dockerfile", context=REPO_ROOT,
                  build_args=lambda: {"PYTHON_IMAGE": load(base, say)}, say=say,
                  pip_cert=True)


def ensure_redis(progress: Progress | None = None, *, base: ImageRef | None = None
                 ) -> ImageRef:
    """Debian's redis-server on the base, non-root (uid 999), configured by its args."""
    say = progress or _default_progress
    base = base or ensure_base(say)
    containerfile = IMAGES_DIR / "redis" / "Containerfile"
    digest = _hash([("recipe", RECIPE_VERSION.encode()), ("base", base.input_hash.encode()),
                    *_files(REPO_ROOT, ["images/redis"])])
    return _build(name="agentqueue-redis", digest=digest, containerfile=containerfile,
                  context=containerfile.parent,
                  build_args=lambda: {"BASE_IMAGE": load(base, say)}, say=say)


def ensure_agent(progress: Progress | None = None, *, operator: ImageRef | None = None
                 ) -> ImageRef:
    """The example agents (examples/agent, examples/contact-center) on the operator image,
    which carries the SDK."""
    say = progress or _default_progress
    operator = operator or ensure_operator(say)
    containerfile = IMAGES_DIR / "agent" / "Containerfile"
    digest = _hash([("recipe", RECIPE_VERSION.encode()),
                    ("operator", operator.input_hash.encode()),
                    *_files(REPO_ROOT, ["images/agent", "examples/agent",
                                        "examples/contact-center/agents.py",
                                        "examples/contact-center/loadgen.py"])])
    return _build(name="agentqueue-agent", digest=digest, containerfile=containerfile,
                  context=EXAMPLES_DIR,
                  build_args=lambda: {"OPERATOR_IMAGE": load(operator, say)}, say=say)


def ensure_images(progress: Progress | None = None) -> dict[str, ImageRef]:
    """Every image the dev cluster runs, built or taken from the cache: keys ``operator``,
    ``redis``, ``agent`` (each named ``agentqueue-<key>:dev``) and ``base``."""
    say = progress or _default_progress
    reason = unavailable_reason()
    if reason:
        raise ImageBuildError(reason)
    start = time.monotonic()
    base = ensure_base(say)
    operator = ensure_operator(say, base=base)
    images = {"base": base, "operator": operator, "redis": ensure_redis(say, base=base),
              "agent": ensure_agent(say, operator=operator)}
    say(f"images ready in {time.monotonic() - start:.0f}s")
    return images


def retag(ref: ImageRef, tag: str) -> ImageRef:
    """The same image under ``<repository>:<tag>`` in a tarball of its own (cached): for
    `helm upgrade` to a new tag without a rebuild. A few seconds (the layers are copied)."""
    if not tag or any(c in tag for c in "/: ") or len(tag) > 128:
        raise ValueError(f"invalid image tag {tag!r}")
    out = cache_dir() / f"{ref.repository}-tag-{tag}-{ref.input_hash[:12]}.tar"
    if not out.is_file():
        ocitar.retag_docker_archive(ref.tarball, out, [f"{ref.repository}:{tag}"])
    return ImageRef(f"{ref.repository}:{tag}", out, ref.input_hash)


def run_in_image(ref: ImageRef, argv: list[str], *, user: str | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a throwaway container of ``ref`` (buildah + runc, no network), as
    the image's own user unless ``user`` is given."""
    local = load(ref)
    ctr = subprocess.run(["buildah", "from", "--pull=never", local], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    try:
        cmd = ["buildah", "run", "--network=none"]
        if user:
            cmd += ["--user", user]
        return subprocess.run([*cmd, ctr, "--", *argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
