"""agentqueue: a Kubernetes operator that turns Redis into a managed work-queue fabric."""

__version__ = "0.1.0"

GROUP = "agentqueue.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
