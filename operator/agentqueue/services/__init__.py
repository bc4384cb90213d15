"""The reconcilers: observe → plan → apply, independent of kopf's calling conventions."""
