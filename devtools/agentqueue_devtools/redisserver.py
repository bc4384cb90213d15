"""A real `redis-server` on loopback, for tests and `agentqueue dev up`.

ACL from the start: the `default` user cannot be used and an admin user with a random
password holds every permission, so tests see the same authentication path as
production. Without AOF `default` is `off`; with AOF it is *locked* instead (on, with
the hash of a random password nobody keeps): Redis replays Function transactions from
the AOF as `default` and drops them when it is off (redis/redis#14541, see
planning/server_risks.py). Options: AOF persistence, TLS only (`--port 0`, so plain TCP is refused),
cluster mode. `RedisCluster` builds a 3-primary cluster from three of these (with
`replicas=1`, six: each primary with a replica, for failover tests). `RedisSentinel`
runs a primary, replicas and Redis Sentinels (redis-server in sentinel mode) watching
them.

Without persistence (the default) a restart loses data, functions and every ACL user
created at run time; the ACL file only holds the admin. That is the failure the
operator must repair, and what the restart tests exercise.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import redis

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "RedisServerError", "free_port",
           "redis_server_binary"]

ADMIN_USER = "aq-admin"
START_TIMEOUT = 10.0
CLUSTER_SLOTS = 16384
_CLUSTER_BUS_OFFSET = 10000

_live: weakref.WeakSet[RedisServer] = weakref.WeakSet()
_live_sentinels: weakref.WeakSet[_SentinelProcess] = weakref.WeakSet()


class RedisServerError(RuntimeError):
    pass


def redis_server_binary() -> str:
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise RedisServerError("redis-server not found (apt-get install redis-server, or set "
                               "REDIS_SERVER)")
    return found


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port; with_bus: port + 10000 (the cluster bus) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus:
            return port
        if port + _CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + _CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RedisServerError("no free port found")


def _write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (ECDSA P-256:
    generation is instant). Returns (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_file, cert_file, key_file = (directory / n for n in ("ca.crt", "server.crt",
                                                              "server.key"))
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return ca_file, cert_file, key_file
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentqueue test redis CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class RedisServer:
    """One redis-server process. `start()` returns once it answers PING (~50 ms)."""

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        admin_username: str = ADMIN_USER,
        admin_password: str | None = None,
        aof: bool = False,
        tls: bool = False,
        cluster: bool = False,
        extra_args: Sequence[str] = (),
        default_user: Literal["off", "locked"] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port(with_bus=cluster)
        self.host = "127.0.0.1"
        self.admin_username = admin_username
        self.admin_password = admin_password or secrets.token_urlsafe(24)
        self.aof = aof
        self.tls = tls
        self.cluster = cluster
        self.extra_args = list(extra_args)
        self.default_user = default_user or ("locked" if aof else "off")
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    def __repr__(self) -> str:  # the admin password stays out of it
        return f"RedisServer({self.url!r}, running={self.running})"

    # --- addresses
    @property
    def url(self) -> str:
        """No credentials in it (as in a Secret's REDIS_URL)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.admin_username}:{self.admin_password}@{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def secret_data(self) -> dict[str, bytes]:
        """The admin connection as Secret data (keys url, username, password, ca.crt)."""
        data = {"url": self.url.encode(), "username": self.admin_username.encode(),
                "password": self.admin_password.encode()}
        if self.ca_file:
            data["ca.crt"] = self.ca_file.read_bytes()
        return data

    # --- lifecycle
    def _args(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        acl = self.workdir / "users.acl"
        digest = hashlib.sha256(self.admin_password.encode()).hexdigest()
        if self.default_user == "off":
            default = "user default off nopass resetchannels -@all"
        else:  # usable by nobody: nobody knows the password the hash is of
            nobody = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
            default = f"user default on #{nobody} ~* &* +@all"
        acl.write_text(f"{default}\n"
                       f"user {self.admin_username} on #{digest} ~* &* +@all\n")
        args = [
            redis_server_binary(),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--aclfile", str(acl),
            "--logfile", str(self.log_file),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
        ]
        if self.aof:
            args += ["--appendfsync", "always"]
        if self.tls:
            ca, cert, key = _write_tls_files(self.workdir)
            self.ca_file = ca
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.cluster:
            args += ["--cluster-enabled", "yes",
                     "--cluster-config-file", str(self.workdir / "nodes.conf"),
                     "--cluster-node-timeout", "1000"]
        return args + self.extra_args

    def start(self) -> RedisServer:
        if self.running:
            return self
        self._proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self._frozen = False
        _live.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client(socket_timeout=1.0)
        try:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    raise RedisServerError(f"redis-server exited: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    # BusyLoadingError is a ConnectionError: loading an AOF after restart
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError(f"redis-server not ready after {START_TIMEOUT}s: "
                                           f"{self._log_tail()}")
                time.sleep(0.01)
        finally:
            client.close()

    def _log_tail(self) -> str:
        stderr = b""
        if self._proc is not None and self._proc.stderr is not None and \
                self._proc.poll() is not None:
            stderr = self._proc.stderr.read() or b""
        try:
            log = self.log_file.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            log = ""
        return (stderr.decode(errors="replace") + log).strip() or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self._frozen:  # a stopped process does not act on SIGTERM
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        self._frozen = False
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown work (no final AOF rewrite, no RDB)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def restart(self) -> None:
        """Same port, same admin; data survives only with `aof=True`."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open but nothing answers (a hung server)."""
        if self._proc is None:
            raise RedisServerError("not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._proc is not None and self._frozen:
            self._proc.send_signal(signal.SIGCONT)
        self._frozen = False

    def client(self, **kwargs: object) -> redis.Redis:
        """A synchronous admin client (for harness work and quick checks)."""
        opts: dict[str, object] = {"host": self.host, "port": self.port,
                                   "username": self.admin_username,
                                   "password": self.admin_password,
                                   "socket_connect_timeout": 2.0, "decode_responses": True}
        if self.tls:
            opts.update(ssl=True, ssl_ca_certs=str(self.ca_file), ssl_cert_reqs="required")
        opts.update(kwargs)
        return redis.Redis(**opts)  # type: ignore[arg-type]

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _replication_args(workdir: Path, password: str) -> list[str]:
    """redis-server arguments for a node that may replicate from another: it logs in to
    its primary as the admin, from a mode-0600 file of `workdir` (never on a command
    line), and a replica's first full sync starts at once instead of after 5 s."""
    workdir.mkdir(parents=True, exist_ok=True)
    auth = workdir / "replication.conf"
    auth.touch(mode=0o600)
    auth.chmod(0o600)  # an existing file keeps its mode on touch()
    auth.write_text(f"masteruser {ADMIN_USER}\nmasterauth {password}\n")
    return ["--include", str(auth), "--repl-diskless-sync-delay", "0"]


class RedisCluster:
    """`nodes` primaries in cluster mode, slots split evenly, each with `replicas`
    replicas (default none). `nodes` lists the primaries first, then the replicas
    (replica `j` of primary `i` is `nodes[nodes_count * (j + 1) + i]`); after a failover
    a replica may be a primary: ask the cluster (`primaries()`).

    Replicas authenticate to their primary as the admin (`masteruser`/`masterauth`, in a
    mode-0600 file of the workdir, not on the command line); every node has them, since
    any node may become a replica of another. `cluster-node-timeout` is 1000 ms, so a
    dead primary is failed over in about 2 s.
    """

    def __init__(self, workdir: Path | str, nodes: int = 3, *,
                 admin_password: str | None = None, replicas: int = 0) -> None:
        self.workdir = Path(workdir)
        password = admin_password or secrets.token_urlsafe(24)
        self.primaries_count = nodes
        self.replicas = replicas
        extra: list[str] = []
        if replicas:
            extra = _replication_args(self.workdir, password)
        self.nodes = [RedisServer(self.workdir / f"node{i}", cluster=True,
                                  admin_password=password, extra_args=extra)
                      for i in range(nodes * (1 + replicas))]

    def __repr__(self) -> str:
        return f"RedisCluster({[n.port for n in self.nodes]})"

    @property
    def url(self) -> str:
        """Any node's URL: clients discover the rest."""
        return self.nodes[0].url

    @property
    def admin_username(self) -> str:
        return self.nodes[0].admin_username

    @property
    def admin_password(self) -> str:
        return self.nodes[0].admin_password

    @property
    def admin_url(self) -> str:
        return self.nodes[0].admin_url

    @property
    def ca_file(self) -> Path | None:
        return None

    def secret_data(self) -> dict[str, bytes]:
        return self.nodes[0].secret_data()

    def start(self, timeout: float = 20.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        clients = [node.client() for node in self.nodes]
        try:
            # A restarted cluster keeps its layout in nodes.conf; only a new one is built.
            if all(int(_cluster_info(c).get("cluster_slots_assigned", 0)) == 0
                   for c in clients):
                self._create(clients)
            self._wait_ok(clients, timeout)
        finally:
            for c in clients:
                c.close()
        return self

    def _create(self, clients: list[redis.Redis]) -> None:
        primaries = clients[:self.primaries_count]
        per = CLUSTER_SLOTS // len(primaries)
        for i, c in enumerate(primaries):
            first = i * per
            last = CLUSTER_SLOTS - 1 if i == len(primaries) - 1 else first + per - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", node.host, node.port)
        if not self.replicas:
            return
        ids = [str(c.execute_command("CLUSTER", "MYID")) for c in primaries]
        deadline = time.monotonic() + START_TIMEOUT
        for n, c in enumerate(clients[self.primaries_count:]):
            primary = ids[n % self.primaries_count]
            while True:  # a replica must know its primary (gossip) before it can follow
                try:
                    c.execute_command("CLUSTER", "REPLICATE", primary)
                    break
                except redis.ResponseError as exc:
                    if time.monotonic() > deadline:
                        raise RedisServerError(f"CLUSTER REPLICATE failed: {exc}") from None
                    time.sleep(0.05)

    def primaries(self) -> list[RedisServer]:
        """The running nodes that are primaries now (a failover changes which)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            with node.client(socket_timeout=2.0) as c:
                if c.info("replication").get("role") == "master":
                    out.append(node)
        return out

    def _wait_ok(self, clients: list[redis.Redis], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = len(clients)
        while True:
            infos = [_cluster_info(c) for c in clients]
            if all(i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == want
                   and int(i.get("cluster_slots_ok", 0)) == CLUSTER_SLOTS for i in infos) \
                    and all(c.info("replication").get("master_link_status", "up") == "up"
                            for c in clients[self.primaries_count:]):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"cluster not ok after {timeout}s: {infos}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _SentinelProcess:
    """One redis-server in sentinel mode (`<conf> --sentinel`). Sentinel rewrites its
    config file (what it learns about replicas and other sentinels), so each has its
    own, mode 0600 (it holds the password the sentinels log in to the nodes with)."""

    def __init__(self, workdir: Path, port: int, conf: str) -> None:
        self.workdir = workdir
        self.port = port
        self.host = "127.0.0.1"
        self._conf = conf
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        if not conf.exists():
            conf.touch(mode=0o600)
            conf.write_text(self._conf)
        self._proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL)
        _live_sentinels.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        with redis.Redis(host=self.host, port=self.port, socket_timeout=1.0,
                         socket_connect_timeout=1.0) as client:
            while True:
                if self._proc.poll() is not None:
                    log = (self.workdir / "sentinel.log")
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RedisServerError(f"redis sentinel exited: {tail or '(no output)'}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError(f"redis sentinel not ready after {START_TIMEOUT}s")
                time.sleep(0.01)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def client(self, **kwargs: Any) -> redis.Redis:
        opts: dict[str, Any] = {"host": self.host, "port": self.port,
                                "socket_connect_timeout": 2.0, "decode_responses": True}
        opts.update(kwargs)
        return redis.Redis(**opts)


class RedisSentinel:
    """A primary, `replicas` replicas (`replicaof`) and `sentinels` Redis Sentinels
    watching them under `master_name`, on loopback. Quorum: a majority of the sentinels.
    `down-after-milliseconds` 1000 and `failover-timeout` 5000, so a dead primary is
    replaced in a few seconds.

    Nodes authenticate to their primary as the admin (`masteruser`/`masterauth`), and the
    sentinels to the nodes (`sentinel auth-user`/`auth-pass`), from mode-0600 files, not
    command lines; every node has them, since any may become a replica. The sentinels
    themselves need no password (agents ask them where the primary is). After a
    failover ask `primary()`.
    """

    def __init__(self, workdir: Path | str, *, replicas: int = 2, sentinels: int = 3,
                 master_name: str = "aqmaster", admin_password: str | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        self.workdir = Path(workdir)
        self.master_name = master_name
        password = admin_password or secrets.token_urlsafe(24)
        common = _replication_args(self.workdir, password)
        first = RedisServer(self.workdir / "node0", admin_password=password, extra_args=common)
        self.nodes = [first] + [
            RedisServer(self.workdir / f"node{i}", admin_password=password,
                        extra_args=[*common, "--replicaof", first.host, str(first.port)])
            for i in range(1, replicas + 1)]
        quorum = sentinels // 2 + 1
        self.sentinels = []
        for i in range(sentinels):
            port = free_port()
            sdir = self.workdir / f"sentinel{i}"
            conf = (f"port {port}\nbind 127.0.0.1\ndaemonize no\n"
                    f"dir {sdir}\nlogfile {sdir / 'sentinel.log'}\n"
                    f"sentinel monitor {master_name} {first.host} {first.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                    f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {master_name} 1\n"
                    f"sentinel auth-user {master_name} {ADMIN_USER}\n"
                    f"sentinel auth-pass {master_name} {password}\n")
            self.sentinels.append(_SentinelProcess(sdir, port, conf))

    def __repr__(self) -> str:
        return (f"RedisSentinel(nodes={[n.port for n in self.nodes]}, "
                f"sentinels={[s.port for s in self.sentinels]})")

    @property
    def sentinel_addresses(self) -> str:
        """`host:port,...` (the Secret key `sentinels`)."""
        return ",".join(f"{s.host}:{s.port}" for s in self.sentinels)

    @property
    def admin_username(self) -> str:
        return self.nodes[0].admin_username

    @property
    def admin_password(self) -> str:
        return self.nodes[0].admin_password

    def secret_data(self) -> dict[str, bytes]:
        """The admin connection as Secret data: sentinels and the master name, no url."""
        return {"sentinels": self.sentinel_addresses.encode(),
                "sentinelMaster": self.master_name.encode(),
                "username": self.admin_username.encode(),
                "password": self.admin_password.encode()}

    def start(self, timeout: float = 20.0) -> RedisSentinel:
        for node in self.nodes:
            node.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait_ok(timeout)
        return self

    def _wait_ok(self, timeout: float) -> None:
        """Replicas in sync and every sentinel knowing the replicas and the others."""
        deadline = time.monotonic() + timeout
        replicas, others = len(self.nodes) - 1, len(self.sentinels) - 1
        while True:
            synced = True
            for node in self.nodes[1:]:
                with node.client() as c:
                    synced = synced and c.info("replication").get("master_link_status") == "up"
            seen = []
            for s in self.sentinels:
                with s.client() as c:
                    state = c.sentinel_master(self.master_name)
                seen.append(int(state.get("num-slaves", 0)) == replicas
                            and int(state.get("num-other-sentinels", 0)) == others)
            if synced and all(seen):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"sentinels not ready after {timeout}s")
            time.sleep(0.1)

    def primary_address(self) -> tuple[str, int]:
        """The primary as the first sentinel that answers names it."""
        for s in self.sentinels:
            if not s.running:
                continue
            try:
                with s.client() as c:
                    host, port = c.sentinel_get_master_addr_by_name(self.master_name)
                return str(host), int(port)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        raise RedisServerError("no sentinel answers")

    def primary(self) -> RedisServer:
        """The node the sentinels name as primary now."""
        _, port = self.primary_address()
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


@atexit.register
def _stop_all() -> None:
    """Never leave redis-server processes behind a test run or a dev stack."""
    for sentinel in list(_live_sentinels):
        sentinel.stop()
    for server in list(_live):
        server.stop(timeout=2.0)
