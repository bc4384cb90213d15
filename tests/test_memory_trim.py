"""agentqueue.memory: freed heap memory goes back to the system (glibc malloc_trim)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
from agentqueue import memory

def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 // 2**20

# ~200 MB of medium blocks (glibc's, not pymalloc's: > 512 bytes), then freed.
kept = [('x' * 600) + str(i) for i in range(300_000)]
assert rss_mb() > 150
del kept
before = rss_mb()
released = memory.trim()
print(before, rss_mb(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_returns_freed_memory_to_the_system() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    before, after, released = int(out[0]), int(out[1]), out[2] == "True"
    # Freed but held by the allocator until trimmed: then (nearly) all of it is returned.
    assert before > 150 and released and after < before - 100, (before, after)
