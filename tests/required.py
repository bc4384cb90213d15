"""Missing real parts: skip on a developer's machine, fail in CI.

The suite runs against real servers (redis-server, kube-apiserver, Go-built tools).
Locally a missing one skips its tests; in CI (``CI`` set to anything but ``false``/``0``/
empty) the same gap is a failure, so a broken bootstrap can never turn into a green run
of skipped tests.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (CI) because the real part `what` is not available."""
    if in_ci():
        pytest.fail(f"{what} (CI must provide it: a skip here would hide a broken setup)",
                    pytrace=False)
    pytest.skip(what)
