"""`agentqueue run` settings that are checked before the operator starts."""

from __future__ import annotations

import pytest

from agentqueue import cli
from agentqueue.config import OperatorConfig


def test_peering_lifetime_defaults_to_15s_not_kopfs_60() -> None:
    args = cli.build_parser().parse_args(["run"])
    assert cli._peering_lifetime(args.peering_lifetime) == 15 == OperatorConfig().peering_lifetime


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("1m", 60), ("10m", 600)])
def test_peering_lifetime_within_bounds(text: str, seconds: int) -> None:
    assert cli._peering_lifetime(text) == seconds


@pytest.mark.parametrize("text", ["4s", "601s", "0s"])
def test_peering_lifetime_out_of_bounds_is_one_clear_line(text: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli._peering_lifetime(text)
    assert str(exc.value) == (f"agentqueue run: --peering-lifetime {text} is out of range: "
                              "between 5s and 10m")
