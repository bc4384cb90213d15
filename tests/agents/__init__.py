"""Helpers for the SDK tests: queue provisioning without the operator, and agent
scripts run as subprocesses (crash/restart drills)."""
