"""conftest.py of the mutation run's copy of the tests (installed by tests/mutation/run.py).

Only the pure unit tests run there, so none of the real-server fixtures are loaded.
Hypothesis is made deterministic (same examples every run, no example database), or a
mutant could be killed in one run and survive the next; its example counts are capped so a
few thousand mutants fit the time budget. A mutant that only a lucky 300th example finds
deserves a plain example test anyway.
"""

from __future__ import annotations

from typing import Any

import hypothesis

MAX_EXAMPLES = 10

_init = hypothesis.settings.__init__


def _capped_init(self: Any, parent: Any = None, **kwargs: Any) -> None:
    if isinstance(kwargs.get("max_examples"), int):
        kwargs["max_examples"] = min(kwargs["max_examples"], MAX_EXAMPLES)
    _init(self, parent, **kwargs)


hypothesis.settings.__init__ = _capped_init  # type: ignore[method-assign]
hypothesis.settings.register_profile(
    "mutation", max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None)
hypothesis.settings.load_profile("mutation")
