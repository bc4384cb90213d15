"""Benchmarks for agentqueue: ``python -m bench.run [--quick] [--only NAME]``.

Every benchmark measures its baseline in the same run, on the same machine, so the
ratios carry the claim even when the absolute numbers move with machine noise.
"""
