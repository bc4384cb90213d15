"""Opt-in memory tracing of the operator, for the benchmarks (``bench/scale.py``).

``install_from_env()`` does nothing at all unless ``AQ_TRACEMALLOC_DIR`` is set (it only
reads the environment; ``tracemalloc`` is imported lazily). When it is set:

- ``tracemalloc.start(frames)`` with ``frames`` from ``AQ_TRACEMALLOC_FRAMES`` (default
  10). Tracing costs CPU and memory (roughly +30-100% CPU on allocation-heavy code and
  tens of bytes per live block): never publish CPU or RSS figures from a traced run.
- a SIGUSR2 handler (``loop.add_signal_handler`` when called inside a running asyncio
  loop, else ``signal.signal``) that writes a summary of a snapshot to
  ``<dir>/tracemalloc-<pid>-<n>.txt`` (``n`` = 1, 2, ...; written to a temp name and
  renamed, so a reader never sees half a file): the total traced bytes, a table of bytes
  per package, the top 40 allocation sites by line and the top 15 by traceback.

Calling it twice is harmless (the second call does nothing).

``AQ_TRACEMALLOC_FRAMES=0`` is the **census** mode: nothing is traced (CPU and RSS stay
comparable with an untraced run) and SIGUSR2 writes ``<dir>/tracemalloc-<pid>-<n>.txt``
with a census of the live Python objects instead (`census`): every object the garbage
collector tracks and everything reachable from them that it does not (strings, bytes,
numbers, atomic dicts and tuples), each counted once by ``sys.getsizeof``, per type and
per the top-level module that defines the type. It attributes memory to types, not to
the code that allocated it, and it misses memory outside Python objects (C libraries,
the allocator's free lists): it is the way to look at 10,000 objects, where tracing
makes the operator too slow to get there. The walk takes seconds and, while it runs,
memory for its set of ids (~100 bytes per object).

Bytes per package -- the rule: each traced block is attributed by walking its traceback
from the innermost frame (where the allocation happened) outwards, and

1. skipping frames in ``tracemalloc`` itself;
2. the first frame of a named package -- ``kopf``, ``kubernetes``, ``agentqueue``,
   ``redis``, ``pydantic`` (with ``pydantic_core``) or ``asyncio`` -- names it. A frame
   of an installed distribution (under ``site-packages``) counts by its top-level
   package (``redis/asyncio/client.py`` is ``redis``); in a source tree
   (``PYTHONPATH=operator``) by the first named directory on its path;
3. other standard-library frames (``json``, ``copy``, ``collections``, ``<frozen ...>``,
   ...) are skipped: they allocate on behalf of their caller, so ``json.loads`` called by
   the kubernetes client counts for ``kubernetes``;
4. any other frame (a third-party package not named: ``aiohttp``, ``prometheus_client``,
   ``yaml``, ...; or a script) ends the walk as ``other``, as does a traceback that is
   only standard library, or one cut short (by the frame limit) before a named frame;
5. except that a walk that reaches its end without a named frame after passing through
   the import machinery (``<frozen importlib...>``) counts as ``imports``: module code
   and module-level objects whose importing module lies beyond the frame limit (nested
   imports are deep). With ``AQ_TRACEMALLOC_FRAMES=50`` most of it is attributed.

The traceback holds at most ``AQ_TRACEMALLOC_FRAMES`` frames, so with few frames more
blocks end as ``other``. Blocks allocated before tracing started are not traced at all.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tracemalloc

ENV_DIR = "AQ_TRACEMALLOC_DIR"
ENV_FRAMES = "AQ_TRACEMALLOC_FRAMES"
DEFAULT_FRAMES = 10
TOP_LINES = 40
TOP_TRACEBACKS = 15
PACKAGES = ("kopf", "kubernetes", "agentqueue", "redis", "pydantic", "asyncio")
OTHER = "other"
IMPORTS = "imports"
_ALIASES = {"pydantic_core": "pydantic"}

_state: dict[str, Any] = {"installed": False, "count": 0, "dir": None}


def install_from_env(environ: dict[str, str] | None = None) -> bool:
    """Start tracing and install the SIGUSR2 handler when ``AQ_TRACEMALLOC_DIR`` is set.

    Returns True when tracing is (now or already) on, False when the variable is unset.
    """
    env = os.environ if environ is None else environ
    directory = env.get(ENV_DIR)
    if not directory:
        return False
    if _state["installed"]:
        return True
    import tracemalloc

    frames = _frames(env.get(ENV_FRAMES))
    Path(directory).mkdir(parents=True, exist_ok=True)
    _state["dir"] = Path(directory)
    if frames == 0:
        _state["census"] = True
    elif not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    _install_handler()
    _state["installed"] = True
    return True


def _frames(text: str | None) -> int:
    """Frames to trace; 0: the census mode (no tracing)."""
    try:
        return max(0, int(text)) if text else DEFAULT_FRAMES
    except ValueError:
        return DEFAULT_FRAMES


def _install_handler() -> None:
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        loop.add_signal_handler(signal.SIGUSR2, _on_signal)
    else:
        signal.signal(signal.SIGUSR2, lambda signum, frame: _on_signal())


def _on_signal() -> None:
    try:
        path = write_snapshot(_state["dir"])
        print(f"agentqueue.memtrace: snapshot written to {path}", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - a diagnostic must never stop the operator
        print(f"agentqueue.memtrace: snapshot failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)


def write_snapshot(directory: Path | str) -> Path:
    """Take a snapshot now and write its summary; returns the file's path."""
    import tracemalloc

    if _state.get("census"):
        return _write(Path(directory), census(title=f"of pid {os.getpid()} at "
                                              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"))
    started = time.monotonic()
    snapshot = tracemalloc.take_snapshot()
    taken = time.monotonic() - started
    _state["count"] += 1
    directory = Path(directory)
    path = directory / f"tracemalloc-{os.getpid()}-{_state['count']}.txt"
    text = summarize(snapshot, seconds=taken, title=f"snapshot {_state['count']} of pid "
                     f"{os.getpid()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    text += f"summary_seconds: {time.monotonic() - started - taken:.2f}\n"
    return _write(directory, text, path)


def _write(directory: Path, text: str, path: Path | None = None) -> Path:
    if path is None:
        _state["count"] += 1
        path = directory / f"tracemalloc-{os.getpid()}-{_state['count']}.txt"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _module(t: type) -> str:
    module = getattr(t, "__module__", None)  # a metaclass may make it a descriptor
    return module if isinstance(module, str) else "?"


# --- the census (AQ_TRACEMALLOC_FRAMES=0) -------------------------------------------------

TOP_TYPES = 30


def census(*, title: str = "", top: int = TOP_TYPES) -> str:
    """Live Python objects per type and per defining module (see the module docstring)."""
    import gc

    started = time.monotonic()
    gc.collect()
    roots = gc.get_objects()
    seen: set[int] = {id(o) for o in roots}
    seen.add(id(roots))
    types: dict[type, list[int]] = {}

    def count(obj: Any) -> None:
        entry = types.get(type(obj))
        if entry is None:
            entry = types[type(obj)] = [0, 0]
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)

    stack: list[Any] = []
    for obj in roots:
        count(obj)
        stack.append(obj)
        while stack:  # what the collector does not track, reachable from what it does
            for ref in gc.get_referents(stack.pop()):
                if id(ref) not in seen and not gc.is_tracked(ref):
                    seen.add(id(ref))
                    count(ref)
                    stack.append(ref)
    del roots, seen
    total = sum(v[1] for v in types.values())
    objects = sum(v[0] for v in types.values())
    modules: dict[str, list[int]] = {}
    for t, (n, size) in types.items():
        entry = modules.setdefault(_module(t).split(".")[0], [0, 0])
        entry[0] += n
        entry[1] += size
    out = [f"# agentqueue memory census {title}",
           f"census_bytes: {total}", f"census_objects: {objects}",
           f"census_seconds: {time.monotonic() - started:.2f}", "",
           "## bytes by the module defining the type (builtins: dict, str, bytes, list, ...)",
           f"{'':7}{'module':<20} {'MiB':>9} {'share':>7} {'objects':>10}"]
    for name, (n, size) in sorted(modules.items(), key=lambda kv: -kv[1][1])[:top]:
        out.append(f"module {name:<20} {_mib(size):>9} {100.0 * size / total:6.1f}% {n:>10}")
    out += ["", f"## top {top} types by bytes"]
    ranked = sorted(types.items(), key=lambda kv: -kv[1][1])[:top]
    for i, (t, (n, size)) in enumerate(ranked, 1):
        out.append(f"type {i:>3}. {_mib(size):>8} MiB {n:>9} objects  "
                   f"{_module(t)}.{getattr(t, '__qualname__', t.__name__)}")
    return "\n".join(out) + "\n"


# --- the summary ------------------------------------------------------------------------


def _stdlib_dirs() -> tuple[str, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs)


class Classifier:
    """Maps a traceback to a package by the rule in the module docstring (cached per
    file name)."""

    def __init__(self) -> None:
        import tracemalloc

        self._stdlib = _stdlib_dirs()
        self._self = os.path.realpath(tracemalloc.__file__)
        self._cache: dict[str, str | None] = {}

    def frame_kind(self, filename: str) -> str | None:
        """A package name, ``""`` for a frame to skip, None for 'other'."""
        if filename in self._cache:
            return self._cache[filename]
        kind = self._kind(filename)
        self._cache[filename] = kind
        return kind

    def _kind(self, filename: str) -> str | None:
        if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>, <unknown>
            return "" if filename.startswith("<frozen") else None
        real = os.path.realpath(filename)
        if real == self._self:
            return ""
        parts = real.split(os.sep)[:-1]
        for marker in ("site-packages", "dist-packages"):
            if marker in parts:  # an installed distribution: its top-level package
                at = len(parts) - 1 - parts[::-1].index(marker)
                top = parts[at + 1] if at + 1 < len(parts) else ""
                return self._named(top)
        for root in self._stdlib:
            if real.startswith(root):  # asyncio, or a frame to skip
                top = real[len(root):].split(os.sep)[0]
                return "asyncio" if top == "asyncio" else ""
        for part in parts:  # a source tree (PYTHONPATH=operator): the first package named
            if self._named(part):
                return self._named(part)
        return None

    @staticmethod
    def _named(part: str) -> str | None:
        name = _ALIASES.get(part, part)
        return name if name in PACKAGES else None

    def package(self, traceback: tracemalloc.Traceback) -> str:
        # A tracemalloc.Traceback is ordered oldest frame first: walk it backwards.
        importing = False
        for frame in reversed(traceback):
            kind = self.frame_kind(frame.filename)
            if kind is None:
                return OTHER
            if kind:
                return kind
            importing = importing or frame.filename.startswith("<frozen importlib")
        return IMPORTS if importing else OTHER


def by_package(stats: list[tracemalloc.Statistic]) -> dict[str, tuple[int, int]]:
    """Package → (bytes, blocks) from statistics by traceback; every package present
    (zeros included)."""
    classifier = Classifier()
    totals: dict[str, list[int]] = {p: [0, 0] for p in (*PACKAGES, IMPORTS, OTHER)}
    for stat in stats:
        entry = totals[classifier.package(stat.traceback)]
        entry[0] += stat.size
        entry[1] += stat.count
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f}"


def summarize(snapshot: tracemalloc.Snapshot, *, seconds: float = 0.0,
              title: str = "snapshot") -> str:
    """The text written on SIGUSR2 (also used by the tests).

    Tracing stays on while this runs (stopping would drop every trace), so it is slow
    on a big heap (its own allocations are traced too; seconds to tens of seconds on a
    busy 2-core machine) but it adds nothing to the next snapshot: it keeps nothing, and
    the source lines it read for the tracebacks are dropped from ``linecache``.
    """
    import linecache
    import tracemalloc

    # The snapshot holds no allocation of this module's work (taken before it started).
    lines_stats = snapshot.statistics("lineno")
    traceback_stats = snapshot.statistics("traceback")
    total = sum(s.size for s in lines_stats)
    blocks = sum(s.count for s in lines_stats)
    current, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
    out = [
        f"# agentqueue tracemalloc {title}",
        f"traced_bytes: {total}",
        f"traced_blocks: {blocks}",
        f"traced_current_peak_mib: {_mib(current)} / {_mib(peak)}",
        f"tracemalloc_overhead_bytes: {tracemalloc.get_tracemalloc_memory()}",
        f"frames: {snapshot.traceback_limit}",
        f"snapshot_seconds: {seconds:.2f}",
        "",
        "## bytes by package (innermost named frame; see agentqueue/memtrace.py)",
        f"{'':8}{'name':<12} {'MiB':>9} {'share':>7} {'blocks':>10}",
    ]
    packages = by_package(traceback_stats)
    for name, (size, count) in sorted(packages.items(), key=lambda kv: -kv[1][0]):
        share = 100.0 * size / total if total else 0.0
        out.append(f"package {name:<12} {_mib(size):>9} {share:6.1f}% {count:>10}")
    out += ["", f"## top {TOP_LINES} by line"]
    for i, stat in enumerate(lines_stats[:TOP_LINES], 1):
        frame = stat.traceback[0]
        out.append(f"line {i:>3}. {_mib(stat.size):>8} MiB {stat.count:>9} blocks  "
                   f"{frame.filename}:{frame.lineno}")
    out += ["", f"## top {TOP_TRACEBACKS} by traceback (most recent call last)"]
    for i, stat in enumerate(traceback_stats[:TOP_TRACEBACKS], 1):
        out.append(f"{i}. {_mib(stat.size)} MiB in {stat.count} blocks")
        out += ["    " + line for line in stat.traceback.format(most_recent_first=False)]
    linecache.clearcache()
    return "\n".join(out) + "\n"
