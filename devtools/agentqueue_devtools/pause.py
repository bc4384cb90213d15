"""Tiny images made locally: the pod sandbox ("pause") image and single-binary images.

No registry is reachable, so the node's sandbox image is a static Go program that waits
for SIGTERM/SIGINT, packed here as a docker-archive tarball (``manifest.json`` + config +
one uncompressed layer), which ``ctr images import`` reads. Everything is deterministic
(fixed mtimes, numeric owners) and cached under ``~/.cache/agentqueue/images``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from . import gobuild

Progress = Callable[[str], None]

PAUSE_IMAGE = "agentqueue.local/pause:1"
_PAUSE_SOURCE = """package main

// The pod sandbox: holds the pod's namespaces and exits on SIGTERM or SIGINT.

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tc := make(chan os.Signal, 1)
\tsignal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
\t<-c
}
"""


def images_dir() -> Path:
    return gobuild.CACHE_ROOT / "images"


def _tar_bytes(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar of `files` (path -> (content, mode)), parents included."""
    buf = io.BytesIO()
    dirs = sorted({str(Path(p).parents[i]) for p in files for i in range(len(Path(p).parents))}
                  - {"."})
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(files):
            data, mode = files[path]
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_image_tar(out: Path, tag: str, files: Mapping[str, tuple[bytes, int]],
                    entrypoint: list[str], cmd: list[str] | None = None) -> Path:
    """Write a one-layer docker-archive image holding `files`, tagged `tag`."""
    layer = _tar_bytes(files)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd or [],
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "agentqueue devcluster"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    members = {
        config_name: config_bytes,
        f"{diff_id}/layer.tar": layer,
        "manifest.json": json.dumps(manifest).encode(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(_tar_bytes({k: (v, 0o644) for k, v in members.items()}))
    tmp.replace(out)
    return out


def static_go_image(name: str, tag: str, source: str, args: list[str] | None = None,
                    progress: Progress | None = None) -> Path:
    """Build `source` (one dependency-free Go file) and pack it as image `tag` at ``/<name>``.

    Returns the cached tarball; both the binary and the tarball are reused when present.
    """
    key = json.dumps([source, tag, args]).encode()
    out = images_dir() / f"{name}-{hashlib.sha256(key).hexdigest()[:12]}.tar"
    if out.exists():
        return out
    began = time.monotonic()
    binary = gobuild.build_static_go(
        name, source, gobuild.CACHE_ROOT / "bin" / "local" / out.stem / name)
    write_image_tar(out, tag, {name: (binary.read_bytes(), 0o755)}, [f"/{name}"], args)
    if progress:
        progress(f"image {tag} built in {time.monotonic() - began:.1f}s ({out})")
    return out


def ensure_pause_image(progress: Progress | None = None) -> Path:
    """The pause image tarball (tag `PAUSE_IMAGE`), built once and cached."""
    return static_go_image("pause", PAUSE_IMAGE, _PAUSE_SOURCE, progress=progress)
