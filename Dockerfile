# syntax=docker/dockerfile:1.7
# The agentqueue operator image: `agentqueue run` on a slim, pinned Python, as a non-root
# user, with nothing but the operator's virtualenv added to the base image.
#   docker build -t agentqueue-operator:dev .        (or: make image)
# Every dependency is installed from requirements.lock (exact versions and their hashes,
# wheels only); the operator is built offline with the pinned requirements-build.lock.
# tests/test_dockerfile.py lints this file with hadolint and replays the builder's RUN
# steps in a fresh virtualenv, so keep them plain shell that works outside Docker too.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Build-time only: where the network re-signs TLS, pass the host's CA bundle as the secret
# `pip_cert` and --build-arg PIP_CERT=/run/secrets/pip_cert (secrets never land in a layer,
# and this stage is thrown away); unset, pip uses its own bundle.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
# The runtime virtualenv has no pip: the final image gets the packages, not an installer.
RUN python -m venv --without-pip /opt/venv
COPY requirements.lock requirements-build.lock ./
# The build virtualenv's own pip installs both: the base's Python needs no pip of its own
# (Debian's python3 has none; python3-venv brings the wheel ensurepip installs).
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    python -m venv /opt/build \
 && /opt/build/bin/python -m pip install --require-hashes --no-deps --only-binary=:all: \
      -r requirements-build.lock
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    /opt/build/bin/python -m pip --python /opt/venv/bin/python install --require-hashes \
      --no-deps --only-binary=:all: -r requirements.lock
# Two of the repository's distributions: the client (the wire contract the operator
# shares with the agents) and the operator. The dev tooling (devtools/) never comes in.
COPY pyproject.toml README.md ./
COPY clients/python/ clients/python/
COPY operator/ operator/
RUN /opt/build/bin/python -m pip wheel --no-deps --no-build-isolation --no-index \
      --wheel-dir /tmp/dist ./clients/python . \
 && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --no-deps --no-index \
      /tmp/dist/agentqueue_client-*.whl /tmp/dist/agentqueue-*.whl \
 && /opt/venv/bin/agentqueue run --help >/dev/null \
 && /opt/venv/bin/python -c "import agentqueue.operator_main, agentqueue_client"

FROM ${PYTHON_IMAGE}
ARG UID=65532
LABEL org.opencontainers.image.title="agentqueue-operator" \
      org.opencontainers.image.description="Kubernetes operator for Redis work queues for AI agents" \
      org.opencontainers.image.source="https://github.com/agentqueue/agentqueue" \
      org.opencontainers.image.licenses="Apache-2.0"
# No installer in the runtime image (a base without pip, as Debian's python3, has none to
# remove); a named user (kopf asks getpass for a name when it has no POD_ID), with the same
# numeric id the chart's runAsUser uses.
RUN if python -m pip --version >/dev/null 2>&1; then \
      python -m pip uninstall --yes --quiet pip setuptools wheel; fi \
 && groupadd --system --gid "${UID}" agentqueue \
 && useradd --system --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin agentqueue
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${UID}:${UID}
# 8080: kopf's /healthz (probes), 9090: Prometheus /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["agentqueue", "run"]
