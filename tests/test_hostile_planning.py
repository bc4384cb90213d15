"""Pure tests of planning/address_policy.py, conflicts.py and deletion.py.

They also judge those modules' mutants (tests/mutation/run.py).
"""
