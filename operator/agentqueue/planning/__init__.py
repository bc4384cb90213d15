"""Pure decisions: no Redis, Kubernetes or kopf imports here."""
