"""Shared harness: a throwaway redis-server, timing helpers, percentiles, the table.

Every benchmark module exposes ``run(quick: bool) -> list[Row]`` and can run alone
(``python -m bench.polling --quick``) through `main`. Load only ever goes to loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_SRC = ROOT / "operator"
SOURCE_ROOTS = (OPERATOR_SRC, ROOT / "clients" / "python", ROOT / "devtools")

HEADER = "| benchmark | case | value | baseline | ratio | goal | met |"
SEPARATOR = "|---|---|---|---|---|---|---|"


def ensure_operator_importable() -> None:
    """Make ``import agentqueue`` (and the client, the dev tooling) work from a plain
    checkout (no editable install)."""
    try:
        import agentqueue  # noqa: F401
        import agentqueue_client  # noqa: F401
        import agentqueue_devtools  # noqa: F401
    except ImportError:
        sys.path[:0] = [str(p) for p in SOURCE_ROOTS]


ensure_operator_importable()


# --- result rows ------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the results table. Values are already formatted for people."""

    benchmark: str
    case: str
    value: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    met: str = ""

    def markdown(self) -> str:
        cells = [self.benchmark, self.case, self.value, self.baseline, self.ratio, self.goal,
                 self.met]
        return "| " + " | ".join(c.replace("|", "\\|") or " " for c in cells) + " |"

    @property
    def failed(self) -> bool:
        return self.met == "error"


def skipped(benchmark: str, case: str, reason: str, goal: str = "") -> Row:
    return Row(benchmark, case, f"skipped: {reason}", goal=goal, met="skipped")


def failed(benchmark: str, case: str, error: BaseException | str, goal: str = "") -> Row:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return Row(benchmark, case, f"error: {text[:300]}", goal=goal, met="error")


def met(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "yes" if ok else "**no**"


def table(rows: Sequence[Row]) -> str:
    return "\n".join([HEADER, SEPARATOR, *(r.markdown() for r in rows)])


# --- formatting -------------------------------------------------------------------------

def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000.0
    if ms >= 10_000:
        return f"{seconds:.1f} s"
    if ms >= 1000:
        return f"{seconds:.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_rate(per_second: float, unit: str = "msg/s") -> str:
    if per_second >= 10_000:
        return f"{per_second / 1000:.0f}k {unit}"
    if per_second >= 1000:
        return f"{per_second / 1000:.1f}k {unit}"
    return f"{per_second:.0f} {unit}"


def fmt_bytes(n: float) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    return f"{n:.0f} B"


def fmt_ratio(value: float, baseline: float) -> str:
    if baseline <= 0 or math.isnan(value) or math.isnan(baseline):
        return ""
    r = value / baseline
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def latency_triplet(samples: Sequence[float]) -> str:
    """``p50 / p95 / max`` of durations in seconds."""
    return " / ".join(fmt_ms(x) for x in (percentile(samples, 50), percentile(samples, 95),
                                          max(samples)))


# --- statistics -------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


# --- processes --------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (threads included, children not)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14, stime 15 (1-based) → 11, 12 here.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchRedis:
    """A throwaway ``redis-server`` on a free loopback port in a temp dir.

    No persistence (``--save '' --appendonly no``). With ``password`` the default user is
    disabled and ``admin`` holds every permission (the operator's production shape);
    without it the default user needs no password (raw benchmarks).
    """

    def __init__(self, *, password: str | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.password = password
        self.username = "admin" if password else None
        self.extra_args = list(extra_args)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> BenchRedis:
        binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise MissingPrerequisite("redis-server not found (apt-get install redis-server)")
        self._tmp = tempfile.TemporaryDirectory(prefix="aq-bench-redis-")
        workdir = Path(self._tmp.name)
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--protected-mode", "no", "--logfile", str(workdir / "redis.log")]
        if self.password:
            acl = workdir / "users.acl"
            acl.write_text("user default off nopass resetchannels -@all\n"
                           f"user admin on >{self.password} ~* &* +@all\n")
            args += ["--aclfile", str(acl)]
        self._proc = subprocess.Popen([*args, *self.extra_args], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.TimeoutError):
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        opts: dict[str, object] = {"host": "127.0.0.1", "port": self.port,
                                   "username": self.username, "password": self.password}
        opts.update(kwargs)
        return redis.Redis(**opts)  # type: ignore[arg-type]

    def aclient(self, **kwargs: object) -> aioredis.Redis:
        opts: dict[str, object] = {"host": "127.0.0.1", "port": self.port,
                                   "username": self.username, "password": self.password}
        opts.update(kwargs)
        return aioredis.Redis(**opts)  # type: ignore[arg-type]

    def flush(self) -> None:
        c = self.client()
        try:
            c.flushall()
        finally:
            c.close()

    def version(self) -> str:
        c = self.client()
        try:
            return str(c.info("server")["redis_version"])
        finally:
            c.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> BenchRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class MissingPrerequisite(RuntimeError):
    """Something optional is not installed: the benchmark prints a 'skipped' row."""


# --- versions ---------------------------------------------------------------------------

def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if not binary:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


def kubernetes_version() -> str:
    try:
        from agentqueue_devtools.binaries import K8S_VERSION
    except ImportError:
        return "unknown"
    return str(K8S_VERSION)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(),
        "redis-server": redis_server_version(),
        "redis-py": package_version("redis"),
        "hiredis": package_version("hiredis"),
        "kopf": package_version("kopf"),
        "kubernetes (apiserver)": kubernetes_version(),
        "kubernetes (python client)": package_version("kubernetes"),
        "taskiq-redis": package_version("taskiq-redis"),
        "rq": package_version("rq"),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- running ----------------------------------------------------------------------------

RunFn = Callable[[bool], list[Row]]


def guarded(name: str, fn: RunFn, quick: bool) -> list[Row]:
    """Run one benchmark; turn a missing prerequisite into a 'skipped' row and any
    other failure into an 'error' row (so one broken benchmark never hides the rest)."""
    try:
        return fn(quick)
    except MissingPrerequisite as exc:
        return [skipped(name, "all", str(exc))]
    except Exception as exc:  # noqa: BLE001 - reported in the table, and the run fails
        traceback.print_exc(file=sys.stderr)
        return [failed(name, "all", exc)]


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays a clean table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(name: str, fn: RunFn, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that it runs, numbers mean little")
    args = parser.parse_args(argv)
    rows = guarded(name, fn, args.quick)
    print(table(rows), flush=True)
    return 1 if any(r.failed for r in rows) else 0
