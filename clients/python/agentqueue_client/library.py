"""The Functions library itself (library.lua, beside this module): its name, its code and
its version. Part of the wire contract: the operator loads it onto every primary from
here, and `calls` builds the calls to its functions."""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["LIBRARY_CODE", "LIBRARY_NAME", "LIBRARY_VERSION"]

LIBRARY_NAME = "agentqueue"
LIBRARY_CODE: str = resources.files(__package__).joinpath("library.lua").read_text()
_VERSION = re.search(r"^local VERSION = '([^']+)'", LIBRARY_CODE, re.MULTILINE)
if _VERSION is None:  # pragma: no cover - a broken edit of library.lua
    raise RuntimeError("library.lua has no `local VERSION = '...'` line")
LIBRARY_VERSION: str = _VERSION.group(1)
