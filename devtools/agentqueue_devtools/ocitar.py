"""Image tarballs in the `docker save` layout ("docker-archive"), written and read without
any daemon or registry.

containerd (`ctr images import`) and buildah (`docker-archive:` transport) both read this
layout: a ``manifest.json`` naming the config blob, the repo tags and the layer tarballs,
each layer an uncompressed tar whose sha256 is its diff id. Written deterministically
(sorted members, fixed mtimes, numeric owners) so the same rootfs gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Mode bits, owner and time of the archive's own members (not the layers' contents).
_MEMBER_MTIME = 0


@dataclass(frozen=True)
class ArchiveInfo:
    """What a docker-archive holds: its tags, its config and its layers' member names."""
    repo_tags: list[str]
    config: dict[str, Any]
    layers: list[str]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_layer(rootfs: Path, out: Path, *, mtime: int,
                empty_dirs: tuple[str, ...] = ("dev", "proc", "sys", "run", "tmp")) -> str:
    """Tar ``rootfs`` into ``out`` reproducibly; returns the layer's diff id (sha256 hex).

    GNU tar does the walk (device nodes, hard links, xattrs-free): ``--sort=name``,
    ``--mtime`` clamped, numeric owners, no atime/ctime in pax headers. The contents of
    ``empty_dirs`` are left out (a runtime mounts them), the directories themselves kept.
    """
    excludes = [f"--exclude=./{d}/*" for d in empty_dirs]
    cmd = ["tar", "--create", "--file", str(out), "--directory", str(rootfs),
           "--sort=name", f"--mtime=@{mtime}", "--clamp-mtime", "--numeric-owner",
           "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
           *excludes, "."]
    subprocess.run(cmd, check=True, env={**os.environ, "LC_ALL": "C"})
    return sha256_file(out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MEMBER_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mtime = _MEMBER_MTIME
    info.mode = 0o644
    with path.open("rb") as f:
        tar.addfile(info, f)


def write_docker_archive(out: Path, *, layers: list[Path], config: dict[str, Any],
                         repo_tags: list[str]) -> None:
    """Write a single-image docker-archive. ``config`` is the OCI image config without
    ``rootfs`` (filled in here from the layers' diff ids)."""
    diff_ids = [sha256_file(p) for p in layers]
    config = {**config, "rootfs": {"type": "layers",
                                   "diff_ids": [f"sha256:{d}" for d in diff_ids]}}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{d}/layer.tar" for d in diff_ids]
    manifest = [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, config_name, config_bytes)
        for name, path in zip(layer_names, layers, strict=True):
            _add_file(tar, name, path)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    tmp.replace(out)


def read_docker_archive(path: Path) -> ArchiveInfo:
    with tarfile.open(path) as tar:
        manifest = json.load(_extract(tar, "manifest.json"))
        if len(manifest) != 1:
            raise ValueError(f"{path}: expected one image, found {len(manifest)}")
        entry = manifest[0]
        config = json.load(_extract(tar, entry["Config"]))
    return ArchiveInfo(list(entry.get("RepoTags") or []), config, list(entry["Layers"]))


def iter_layer_files(path: Path) -> Iterator[tuple[str, str, tarfile.TarFile, tarfile.TarInfo]]:
    """(layer member, file path, layer tar, entry) for every entry of every layer."""
    info = read_docker_archive(path)
    with tarfile.open(path) as outer:
        for layer in info.layers:
            with tarfile.open(fileobj=_extract(outer, layer)) as inner:
                for entry in inner:
                    yield layer, entry.name.removeprefix("./"), inner, entry


def retag_docker_archive(src: Path, dst: Path, repo_tags: list[str]) -> None:
    """Copy ``src`` to ``dst`` with other repo tags (blobs are copied as they are)."""
    tmp = dst.with_name(dst.name + ".part")
    with tarfile.open(src) as tin, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            if member.name == "manifest.json":
                manifest = json.load(_extract(tin, member.name))
                for entry in manifest:
                    entry["RepoTags"] = repo_tags
                _add_bytes(tout, "manifest.json", json.dumps(manifest).encode())
            elif member.name == "repositories":
                continue  # legacy tag index; manifest.json is what importers read
            elif member.isfile():
                f = tin.extractfile(member)
                assert f is not None
                tout.addfile(member, f)
            else:
                tout.addfile(member)
    tmp.replace(dst)


def _extract(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
    f = tar.extractfile(name)
    if f is None:
        raise ValueError(f"{name} is not a file in the archive")
    return f  # type: ignore[return-value]


def remove_tree(path: Path) -> None:
    """rm -rf that also works on a debootstrap tree (read-only dirs, device nodes)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=False)
