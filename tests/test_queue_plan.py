"""Pure tests of planning/queue_plan.py (they also judge its mutants: tests/mutation/run.py)."""
