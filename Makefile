# The two commands of the README:
#   make dev-up   set up everything, start the local stack (a real node where one can run:
#                 Redis and the operator as pods), run the operator on a sample
#   make test     set up everything, then lint, type-check, check the CRDs and run all tests
.PHONY: bootstrap dev-up dev-down test lint unit bench crds kind-up image image-agent kind-load kind-load-agent deploy e2e mutation

VENV := .venv/bin
KIND_CLUSTER ?= agentqueue
IMAGE ?= agentqueue-operator:dev

bootstrap:
	./scripts/bootstrap.sh

dev-up: bootstrap
	$(VENV)/agentqueue dev up

dev-down:
	$(VENV)/agentqueue dev down

lint:
	$(VENV)/ruff check operator clients devtools tests bench
	$(VENV)/mypy
	$(VENV)/agentqueue crds --check
	./scripts/chart-crds.sh --check

test: bootstrap lint
	$(VENV)/python -m pytest -q -p no:cacheprovider --timeout=600 --durations=25 \
	  -n $(TEST_WORKERS) --dist loadfile
	$(VENV)/python -m tests.mutation.run --budget $(MUTATION_BUDGET)

# Mutation testing of the pure decision code (modules and tests listed in
# tests/mutation/run.py). Verdicts are cached in ~/.cache/agentqueue/mutation, so a run
# tests only what changed; `make test` stops testing after MUTATION_BUDGET seconds (the
# rest is tested next time) and fails on a survivor not listed in tests/mutation/.
MUTATION_BUDGET ?= 120
# pytest-xdist workers: most tests wait on servers, so two share the 2-core CI machine well
# (tests/conftest.py's scheduler keeps a module on one worker, the machine-changing modules serial).
TEST_WORKERS ?= 2
mutation: bootstrap
	$(VENV)/python -m tests.mutation.run

unit: bootstrap
	$(VENV)/python -m pytest -q -m "not k8s and not slow"

bench: bootstrap
	$(VENV)/python -m bench.run

crds:
	$(VENV)/agentqueue crds
	./scripts/chart-crds.sh

# --- kind, for users with Docker (not used by our own suite) -------------------------
# make kind-up image kind-load deploy e2e    (what .github/workflows/kind-e2e.yml runs)
RELEASE_NAMESPACE ?= agentqueue-system
E2E_NAMESPACE ?= agentqueue-e2e
CHART := charts/agentqueue-operator

kind-up:
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 120s

image:
	docker build -t $(IMAGE) .

# The example agents (quickstart, contact center): the operator image + the scripts.
AGENT_IMAGE ?= agentqueue-agent:dev
image-agent: image
	docker build -t $(AGENT_IMAGE) --build-arg OPERATOR_IMAGE=$(IMAGE) \
	  -f images/agent/Containerfile examples

kind-load:
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

kind-load-agent:
	kind load docker-image $(AGENT_IMAGE) --name $(KIND_CLUSTER)

# CRDs first, server-side (the documented upgrade path: Helm never upgrades crds/), then a
# throwaway Redis and the chart pointing at it.
deploy:
	kubectl apply --server-side --force-conflicts -f $(CHART)/crds/
	kubectl create namespace $(RELEASE_NAMESPACE) --dry-run=client -o yaml | kubectl apply -f -
	kubectl apply -n $(RELEASE_NAMESPACE) -f $(CHART)/ci/e2e-redis.yaml
	kubectl rollout status -n $(RELEASE_NAMESPACE) deployment/redis --timeout=180s
	helm upgrade --install agentqueue $(CHART) -n $(RELEASE_NAMESPACE) --skip-crds \
	  --set image.repository=$(firstword $(subst :, ,$(IMAGE))) \
	  --set image.tag=$(lastword $(subst :, ,$(IMAGE))) --set image.pullPolicy=Never \
	  --set redis.existingSecret.name=redis-admin --wait --timeout 300s

# The quickstart must become Ready, its credentials Secret appear, and `helm test` pass.
e2e:
	kubectl create namespace $(E2E_NAMESPACE) --dry-run=client -o yaml | kubectl apply -f -
	kubectl apply -n $(E2E_NAMESPACE) -f examples/quickstart.yaml
	kubectl wait -n $(E2E_NAMESPACE) --for=condition=Ready agentqueues --all --timeout=120s
	kubectl wait -n $(E2E_NAMESPACE) --for=condition=Ready consumergroups --all --timeout=120s
	kubectl wait -n $(E2E_NAMESPACE) --for=condition=Ready retentionpolicies --all --timeout=120s
	kubectl get -n $(E2E_NAMESPACE) secret billing.intake billing.billing-agent
	helm test agentqueue -n $(RELEASE_NAMESPACE) --timeout 180s
	kubectl get -n $(E2E_NAMESPACE) agentqueues,consumergroups,retentionpolicies -o wide
