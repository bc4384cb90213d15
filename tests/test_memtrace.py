"""agentqueue.memtrace: opt-in tracemalloc snapshots on SIGUSR2 (fast, no cluster).

Each case runs in a child interpreter: tracing and the signal handler are process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("AQ_TRACEMALLOC_DIR", None)
    full.pop("AQ_TRACEMALLOC_FRAMES", None)
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "operator"),
                                                       full.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=60)


SIGNAL_SELF = """
    import os, signal, sys, time
    from pathlib import Path
    from agentqueue import memtrace
    assert memtrace.install_from_env() is True
    assert memtrace.install_from_env() is True  # twice: harmless
    import json
    keep = [json.loads('{"a": [1, 2, 3], "b": "%s"}' % ("x" * 2000)) for _ in range(3000)]
    directory = Path(os.environ["AQ_TRACEMALLOC_DIR"])
    os.kill(os.getpid(), signal.SIGUSR2)
    deadline = time.monotonic() + 20
    while not list(directory.glob("tracemalloc-*.txt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(len(keep))
"""


def test_sigusr2_writes_a_summary(tmp_path: Path) -> None:
    result = _run(SIGNAL_SELF, {"AQ_TRACEMALLOC_DIR": str(tmp_path),
                                "AQ_TRACEMALLOC_FRAMES": "5"})
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("tracemalloc-*.txt"))
    assert [f.name for f in files] == [f"tracemalloc-{files[0].name.split('-')[1]}-1.txt"]
    text = files[0].read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines()
                  if line.split(":")[0] in ("traced_bytes", "frames"))
    assert int(fields["traced_bytes"]) > 3000 * 2000  # the kept strings at least
    assert fields["frames"] == "5"
    packages = [line.split()[1] for line in text.splitlines() if line.startswith("package ")]
    assert sorted(packages) == sorted(["kopf", "kubernetes", "agentqueue", "redis",
                                       "pydantic", "asyncio", "imports", "other"])
    # json.loads is standard library: skipped, so the blocks go to the script ('other').
    other = next(line for line in text.splitlines() if line.startswith("package other"))
    assert float(other.split()[2]) > 5.0  # MiB
    assert "## top 40 by line" in text and "## top 15 by traceback" in text
    assert sum(1 for line in text.splitlines() if line.startswith("line ")) <= 40
    assert not list(tmp_path.glob("*.tmp"))


def test_unset_means_no_effect() -> None:
    result = _run("""
        import signal, sys, tracemalloc
        from agentqueue import memtrace
        assert memtrace.install_from_env() is False
        assert not tracemalloc.is_tracing()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
        print("ok")
    """, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_inside_a_running_loop_uses_the_loop(tmp_path: Path) -> None:
    result = _run("""
        import asyncio, os, signal
        from pathlib import Path
        from agentqueue import memtrace

        async def main():
            assert memtrace.install_from_env()
            keep = [bytearray(1000) for _ in range(2000)]
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(2000):
                await asyncio.sleep(0.01)
                if list(Path(os.environ["AQ_TRACEMALLOC_DIR"]).glob("*.txt")):
                    return len(keep)
            raise SystemExit("no snapshot")

        print(asyncio.run(main()))
    """, {"AQ_TRACEMALLOC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    text = next(tmp_path.glob("tracemalloc-*-1.txt")).read_text()
    assert "frames: 10" in text


def test_classifier_rule() -> None:
    result = _run("""
        import asyncio, json, os, sysconfig
        from agentqueue import memtrace
        c = memtrace.Classifier()
        site = os.path.join(sysconfig.get_paths()["purelib"])
        std = sysconfig.get_paths()["stdlib"]
        cases = {
            os.path.join(site, "redis", "asyncio", "client.py"): "redis",
            os.path.join(site, "kopf", "_core", "x.py"): "kopf",
            os.path.join(site, "pydantic_core", "core.py"): "pydantic",
            os.path.join(site, "aiohttp", "client.py"): None,
            asyncio.__file__: "asyncio",
            json.__file__: "",
            "<frozen importlib._bootstrap>": "",
            "/src/operator/agentqueue/services/x.py": "agentqueue",
            "/src/script.py": None,
        }
        for path, want in cases.items():
            got = c.frame_kind(path)
            assert got == want, (path, got, want)
        print("ok")
    """, {})
    assert result.returncode == 0, result.stderr


def test_frames_zero_is_a_census_without_tracing(tmp_path: Path) -> None:
    code = SIGNAL_SELF.replace("print(len(keep))", """
    import tracemalloc
    assert not tracemalloc.is_tracing()
    print(len(keep))""")
    result = _run(code, {"AQ_TRACEMALLOC_DIR": str(tmp_path), "AQ_TRACEMALLOC_FRAMES": "0"})
    assert result.returncode == 0, result.stderr
    text = next(tmp_path.glob("tracemalloc-*.txt")).read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line
                  and line.startswith("census_"))
    # 3,000 kept strings of 2,000 characters (counted once each, from untracked dicts).
    assert 3000 * 2000 < int(fields["census_bytes"]) < 200 * 2**20
    top = next(line for line in text.splitlines() if line.startswith("type   1."))
    assert top.endswith("builtins.str"), top
    assert any(line.startswith("module builtins") for line in text.splitlines())
